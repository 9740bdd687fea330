"""The speed paths of the SAC learner, all in one place; each computes the eager update's maths
(:mod:`hilrl.policies.sac.update`, the reference) and is chosen in ``SACConfig.execution``:

* ``fused_layer_norm``: each critic hidden layer's bias, LayerNorm, affine and ReLU as one C++ pass forward
  and one backward (``csrc/layer_norm.cpp``; :func:`fused_bias_layer_norm_relu`, used by
  :class:`~hilrl.policies.networks.CriticEnsemble`);
* ``compile_critic``: the online and target critic ensembles through ``torch.compile`` (:func:`compile_critic`);
* ``cuda_graph``: the whole eager update captured as one CUDA graph and replayed (:class:`GraphedUpdate`);
* ``cpu_fused_update``: the whole update as one C++ call, forward and backward passes written out, no
  autograd (``csrc/sac_update.cpp``; :class:`CppUpdate`).

Not an option: with cached fp16 feature maps (``images.encoder: efficientnet_lite0``) on the CPU, their random
shift and float32 conversion run as one C++ pass wherever the extensions build (``csrc/shift_maps.cpp``;
:func:`shift_feature_maps_to_float`), else as torch's gather: the same numbers.

The C++ sources are real files under ``csrc/`` (shipped as package data): the LayerNorm+ReLU row kernels
once, in ``csrc/ln_relu_rows.h``, included by both extensions. One helper builds and loads them
(:func:`load_extension`: ``torch.utils.cpp_extension.load``, cached under ``TORCH_EXTENSIONS_DIR``, by
default ``~/.cache/torch_extensions``; about a minute the first time; ``make install`` builds both ahead),
so they need a C++ compiler and ninja.

Why they pay: the eager update spends about half its time on one CPU core outside the matmuls: Python, the
dispatcher and autograd around some 300 small ops, and the memory passes of the LayerNorm, ReLU,
tanh-Gaussian and loss terms (``benchmarks/learner_throughput.py``; the JAX RLPD peer removes the same
overhead by tracing the update into one XLA program, ikostrikov/rlpd).

The C++ update reads the learner only through :class:`UpdateParts` (its networks, optimisers and
temperature by name, made by :meth:`hilrl.policies.sac.agent.SAC.update_parts`) and its settings through a
named struct (``Hyper``). Which settings combine is checked once, in :class:`~hilrl.policies.sac.config.SACConfig`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hilrl.errors import HilrlError

__all__ = ["CppUpdate", "GraphedUpdate", "UpdateParts", "compile_critic", "fused_bias_layer_norm_relu",
           "has_cxx_compiler", "kernels_buildable", "load_extension", "shift_feature_maps_to_float"]

CSRC = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-fopenmp-simd"]
_lock = threading.Lock()
_loaded: dict[str, Any] = {}

TensorTree = dict[str, Any]


# ---- building the C++ extensions ------------------------------------------------------------------

def has_cxx_compiler() -> bool:
    """Whether C++ can be built here (torch uses ``$CXX``, else g++ or clang++): our extensions, torch.compile's."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if name)


def kernels_buildable() -> str | None:
    """``None`` when the C++ extensions can be built here, else what is missing (a compiler or ninja)."""
    from torch.utils.cpp_extension import is_ninja_available

    if not has_cxx_compiler():
        return "a C++ compiler (g++ or clang++, or set CXX)"
    if not is_ninja_available():
        return "ninja (pip install ninja)"
    return None


def load_extension(source: str, setting: str) -> Any:
    """The extension built from ``csrc/<source>`` (with the shared headers of ``csrc/``), built on first use.

    Its name carries a digest of its source and of every header under ``csrc/``, so a changed header rebuilds
    it too and a change in the other extension's source does not. ``setting`` names the option that needs it,
    for the error when no compiler is there.
    """
    module = _loaded.get(source)  # (no lock once built: the fused LayerNorm asks for it in every layer)
    if module is not None:
        return module
    with _lock:
        if source not in _loaded:
            missing = kernels_buildable()
            if missing is not None:
                raise HilrlError(f"SACConfig.{setting}=True builds a C++ extension and needs {missing}; install it "
                                 f"or set {setting}=False (the eager update computes the same)")
            from torch.utils.cpp_extension import load

            digest = hashlib.sha256()
            for path in sorted(CSRC.iterdir()):
                if path.suffix == ".h" or path.name == source:
                    digest.update(path.name.encode() + path.read_bytes())
            name = f"hilrl_{Path(source).stem}_{digest.hexdigest()[:12]}"
            _loaded[source] = load(name, sources=[str(CSRC / source)], extra_cflags=_FLAGS,
                                   extra_include_paths=[str(CSRC)], verbose=False)
    return _loaded[source]


def load_layer_norm() -> Any:
    """The fused LayerNorm+ReLU extension (``csrc/layer_norm.cpp``)."""
    return load_extension("layer_norm.cpp", "execution.fused_layer_norm")


def load_sac_update() -> Any:
    """The whole-update extension (``csrc/sac_update.cpp``)."""
    return load_extension("sac_update.cpp", "execution.cpu_fused_update")


def load_shift_maps() -> Any:
    """The cached-feature-map shift extension (``csrc/shift_maps.cpp``)."""
    return load_extension("shift_maps.cpp", "images.encoder: efficientnet_lite0")


def shift_feature_maps_to_float(maps: torch.Tensor, shifts: torch.Tensor, pad: int, out: torch.Tensor) -> bool:
    """Write the random shift (:func:`hilrl.policies.encoders.random_shift`) of fp16 feature maps
    ``(B, C, h, w)`` into float32 ``out`` in one C++ pass; ``False`` (nothing written) where no extension can be
    built here (no compiler or ninja: the caller gathers in torch, the same numbers, about 3x the time)."""
    global _shift_buildable
    if _shift_buildable is None:
        _shift_buildable = kernels_buildable() is None
    if not _shift_buildable:
        return False
    load_shift_maps().shift_to_float(maps.contiguous(), shifts, pad, out)
    return True


_shift_buildable: bool | None = None  # asked once per process (finding ninja runs it)


# ---- fused_layer_norm ------------------------------------------------------------------------------

class _FusedBiasLayerNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lin_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                eps: float) -> torch.Tensor:
        y, xhat, rstd = load_layer_norm().forward(x.contiguous(), lin_bias.contiguous(), weight.contiguous(),
                                                  bias.contiguous(), eps, True)
        ctx.save_for_backward(y, xhat, rstd, weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, xhat, rstd, weight = ctx.saved_tensors
        wants = ctx.needs_input_grad
        param_grads = any(wants[1:4])
        gx, glb, gw, gb = load_layer_norm().backward(grad.contiguous(), y, xhat, rstd, weight.contiguous(),
                                                     param_grads)
        return (gx if wants[0] else None, glb if wants[1] else None, gw if wants[2] else None,
                gb if wants[3] else None, None)


def fused_bias_layer_norm_relu(x: torch.Tensor, lin_bias: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                               eps: float) -> torch.Tensor:
    """``relu(layer_norm(x + lin_bias) * weight + bias)`` for ``x (N, B, F)`` and ``(N, 1, F)`` parameters,
    float32 on the CPU, in one pass forward and one backward."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, lin_bias, weight, bias)):
        return _FusedBiasLayerNormReLU.apply(x, lin_bias, weight, bias, eps)
    return load_layer_norm().forward(x.contiguous(), lin_bias.contiguous(), weight.contiguous(), bias.contiguous(),
                                     eps, False)[0]


# ---- compile_critic --------------------------------------------------------------------------------

def compile_critic(ensemble: nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """``ensemble`` through ``torch.compile`` (inductor fuses the LayerNorm/affine/ReLU passes); the wrapper
    shares the module's parameters. On a CPU inductor builds C++ kernels, so a compiler must be there."""
    if device.type == "cpu" and not has_cxx_compiler():
        raise HilrlError("SACConfig.execution.compile_critic=True needs a C++ compiler on CPU (torch.compile builds "
                         "C++ kernels); install g++ (or set CXX) or set execution.compile_critic=False")
    return torch.compile(ensemble, dynamic=False)


# ---- cuda_graph ------------------------------------------------------------------------------------

class GraphedUpdate:
    """An update function replayed as a CUDA graph: three eager warm-up updates on a side stream (as capture
    requires; they are real updates), then one capture, then replays after copying each batch and noise into
    the captured inputs. A batch of another shape is captured anew; :meth:`reset` forgets the graph (call it
    when tensors the graph reads are replaced: a loaded optimiser state, a fitted normaliser or prior).

    Args:
        update: ``update(batch, noise) -> metrics`` (the eager update), run eagerly and captured.
        device: the CUDA device.
    """

    def __init__(self, update: Callable[[TensorTree, TensorTree], TensorTree], device: torch.device):
        self.update, self.device = update, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[TensorTree, TensorTree, TensorTree] | None = None
        self._warmups = 0

    def reset(self) -> None:
        self.graph, self._static = None, None

    def __call__(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        if self.graph is None and self._warmups < 3:
            self._warmups += 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                metrics = self.update(batch, noise)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return metrics
        if self.graph is None or self._static is None or not _same_shapes(self._static[0], batch):
            static_batch, static_noise = _clone_tree(batch), _clone_tree(noise)
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                static_metrics = self.update(static_batch, static_noise)
            self.graph, self._static = graph, (static_batch, static_noise, static_metrics)
        static_batch, static_noise, static_metrics = self._static
        _copy_tree(static_batch, batch)
        _copy_tree(static_noise, noise)
        self.graph.replay()
        return {k: v.clone() for k, v in static_metrics.items()}


def _clone_tree(tree: Any) -> Any:
    return {k: _clone_tree(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree.clone()


def _copy_tree(dst: Any, src: Any) -> None:
    if isinstance(dst, Mapping):
        for k in dst:
            _copy_tree(dst[k], src[k])
    else:
        dst.copy_(src, non_blocking=True)


def _same_shapes(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same_shapes(a[k], b[k]) for k in a)
    return a.shape == b.shape and a.dtype == b.dtype


# ---- cpu_fused_update ------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateParts:
    """What the C++ update reads and writes of a learner, by name (made by ``SAC.update_parts``).

    Attributes:
        critic, target_critic: the online and target :class:`~hilrl.policies.networks.CriticEnsemble`.
        encoder, target_encoder: the online and target :class:`~hilrl.policies.encoders.ObservationEncoder`
            (state keys only; their standardisation buffers are read).
        actor_linears: the actor MLP's ``nn.Linear`` layers in order (ReLU between them, no LayerNorm).
        log_temperature: ``log alpha`` (0-d).
        critic_optimizer, actor_optimizer, temperature_optimizer: one-group ``torch.optim.Adam(fused=True)``
            over the critic's, the actor's parameters and ``[log_temperature]``.
        polyak: ``(target parameters, online parameters)`` pairwise, moved by ``tau`` after each critic step.
        target_entropy: the temperature step's entropy target.
        bc_prior: the :class:`~hilrl.policies.bc_prior.GaussianBCPrior` whose mean action competes in the critic
            target (``variants.bc_proposal``, IBRL); ``None`` without it. Read only (it is fitted before updates).
    """

    critic: nn.Module
    target_critic: nn.Module
    encoder: nn.Module
    target_encoder: nn.Module
    actor_linears: list[nn.Linear]
    log_temperature: torch.Tensor
    critic_optimizer: torch.optim.Adam
    actor_optimizer: torch.optim.Adam
    temperature_optimizer: torch.optim.Adam
    polyak: tuple[list[torch.Tensor], list[torch.Tensor]]
    target_entropy: float
    bc_prior: nn.Module | None = None


_METRICS = ("critic_loss", "q", "target_q", "actor_loss", "entropy", "temperature", "temperature_loss", "bc_loss")


class CppUpdate:
    """The eager update for a state-based learner on the CPU, as one call of ``csrc/sac_update.cpp``.

    It consumes the noise of ``SAC.draw_noise`` as the eager path does, so from the same state, batch and
    noise both give the same update up to float rounding (``tests/test_sac.py``). Gradient buffers are made
    once and handed to the optimisers' fused Adam kernel (the parameters' ``.grad`` stay ``None``); the
    optimiser state is re-read after :meth:`reset` (call it when a checkpoint replaces that state).

    Args:
        parts: the learner's networks, optimisers and temperature.
        config: its :class:`~hilrl.policies.sac.config.SACConfig` (what combines with this path is checked there).
    """

    def __init__(self, parts: UpdateParts, config: Any):
        self.parts, self.config = parts, config
        self.kernel = ext = load_sac_update()
        critic_params = [p for p in parts.critic.parameters() if p.requires_grad]
        actor_params = [p for lin in parts.actor_linears for p in (lin.weight, lin.bias)]
        self.grads = {p: torch.zeros_like(p) for p in [*critic_params, *actor_params]}
        self.temperature_grad = torch.zeros_like(parts.log_temperature)

        def ensemble(module: nn.Module, of: Callable[[torch.Tensor], torch.Tensor]) -> Any:
            tensors = ext.EnsembleTensors()
            tensors.weights = [of(lin.weight) for lin in module.linears] + [of(module.head.weight)]
            tensors.biases = [of(lin.bias) for lin in module.linears] + [of(module.head.bias)]
            tensors.norm_weights = [of(norm.weight) for norm in module.norms]
            tensors.norm_biases = [of(norm.bias) for norm in module.norms]
            return tensors

        def mlp(linears: list[nn.Linear], of: Callable[[torch.Tensor], torch.Tensor]) -> Any:
            tensors = ext.MlpTensors()
            tensors.weights = [of(lin.weight) for lin in linears]
            tensors.biases = [of(lin.bias) for lin in linears]
            return tensors

        def same(p: torch.Tensor) -> torch.Tensor:
            return p

        nets = ext.Networks()
        nets.critic, nets.target = ensemble(parts.critic, same), ensemble(parts.target_critic, same)
        nets.critic_grads = ensemble(parts.critic, self.grads.__getitem__)
        nets.actor = mlp(parts.actor_linears, same)
        nets.actor_grads = mlp(parts.actor_linears, self.grads.__getitem__)
        self.bc_prior = parts.bc_prior if config.variants.bc_proposal else None
        if self.bc_prior is not None:  # its parameters and buffers are filled in place by its fit or a checkpoint
            nets.prior = mlp([m for m in self.bc_prior.policy.net if isinstance(m, nn.Linear)], same)
        nets.polyak_target, nets.polyak_online = list(parts.polyak[0]), list(parts.polyak[1])
        self.networks = nets
        self.hyper = ext.Hyper()
        for name in ("gamma", "tau", "log_std_min", "log_std_max", "backup_entropy", "learn_temperature"):
            setattr(self.hyper, name, getattr(config, name))
        self.hyper.layer_norm_eps = float(parts.critic.norms[0].eps)  # one eps for every layer (EnsembleLayerNorm)
        self.hyper.target_entropy = float(parts.target_entropy)
        self.hyper.bc_coef = config.variants.bc_coef
        self.hyper.use_bc = config.variants.bc_coef > 0
        self.hyper.all_members = config.num_min_critics == config.num_critics
        self.hyper.bc_proposal = self.bc_prior is not None
        if config.variants.target_bounds is not None:
            self.hyper.clip_target = True
            self.hyper.target_low, self.hyper.target_high = config.variants.target_bounds
        self.optimisers: Any = None

    def reset(self) -> None:
        """Forget the optimiser state (a loaded checkpoint replaced it)."""
        self.optimisers = None

    def _adam(self, optimizer: torch.optim.Adam) -> tuple[Any, Any]:
        """The group's tensors, its state made as ``Adam._init_group`` makes it for ``fused=True``
        (torch/optim/adam.py) when the optimiser has not stepped, and its hyperparameters."""
        ext, group = self.kernel, optimizer.param_groups[0]
        state = ext.AdamTensors()
        params = list(group["params"])
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            values = optimizer.state[p]
            if not values:
                values["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                values["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                values["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(values["exp_avg"])
            exp_avg_sqs.append(values["exp_avg_sq"])
            steps.append(values["step"])
        state.params, state.exp_avgs, state.exp_avg_sqs, state.steps = params, exp_avgs, exp_avg_sqs, steps
        state.grads = [self.grads.get(p, self.temperature_grad) for p in params]
        hyper = ext.AdamHyper()
        hyper.lr, (hyper.beta1, hyper.beta2) = float(group["lr"]), map(float, group["betas"])
        hyper.weight_decay, hyper.eps = float(group["weight_decay"]), float(group["eps"])
        return state, hyper

    def __call__(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        parts, ext = self.parts, self.kernel
        if self.optimisers is None:
            self.optimisers = ext.Optimisers()
            self.optimisers.critic, self.hyper.critic_adam = self._adam(parts.critic_optimizer)
            self.optimisers.actor, self.hyper.actor_adam = self._adam(parts.actor_optimizer)
            self.optimisers.temperature, self.hyper.temperature_adam = self._adam(parts.temperature_optimizer)
        rows = batch["actions"].shape[0]
        keys = parts.encoder.state_keys
        inputs = ext.Inputs()
        inputs.obs = [batch["obs"][k].reshape(rows, -1).float().contiguous() for k in keys]
        inputs.next_obs = [batch["next_obs"][k].reshape(rows, -1).float().contiguous() for k in keys]
        online, target = parts.encoder, parts.target_encoder
        inputs.online_offset, inputs.online_scale = online.state_offset, online.state_scale
        inputs.online_clip = online.state_clip
        inputs.target_offset, inputs.target_scale = target.state_offset, target.state_scale
        inputs.target_clip = target.state_clip
        if self.bc_prior is not None:
            prior = self.bc_prior.encoder
            inputs.prior_offset, inputs.prior_scale, inputs.prior_clip = (prior.state_offset, prior.state_scale,
                                                                          prior.state_clip)
        demo_mask = batch.get("demo_mask")
        inputs.actions, inputs.rewards = batch["actions"].contiguous(), batch["rewards"].contiguous()
        inputs.terminated = batch["terminated"].contiguous()
        inputs.next_eps, inputs.actor_eps = noise["next_eps"].contiguous(), noise["actor_eps"].contiguous()
        inputs.members = noise["members"].contiguous()
        inputs.demo_mask = demo_mask.contiguous() if demo_mask is not None else torch.empty(0)
        inputs.log_temperature, inputs.temperature_grad = parts.log_temperature, self.temperature_grad
        with torch.no_grad():
            values = ext.update(self.networks, self.optimisers, inputs, self.hyper)
        names = _METRICS if demo_mask is None else (*_METRICS, "q_demo", "q_online")
        return dict(zip(names, values.unbind()))
