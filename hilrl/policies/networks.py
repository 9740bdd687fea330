"""Networks of the SAC learner: a batched critic ensemble and a tanh-Gaussian actor.

The critic ensemble keeps every member's weights stacked in ``(N, in, out)``
tensors, so all ``N`` members run as one ``torch.baddbmm`` per layer instead of
a Python loop over ``N`` modules (RLPD's ``nn.vmap`` ensemble, ikostrikov/rlpd).
A subset of members (the two target members of the RLPD backup) runs by
indexing those stacked tensors, so the unchosen members cost nothing.

Speed on CPU (``benchmarks/learner_throughput.py``): at hidden 256 the
per-member LayerNorm, its affine map and the ReLU are memory-bound passes over
``(N, B, 256)`` activations that cost about as much as the matmuls. Eager
PyTorch runs each as its own pass; ``SACConfig.execution.fused_layer_norm`` runs bias, LayerNorm,
affine and ReLU as one C++ pass each way (:func:`hilrl.policies.sac.fast.fused_bias_layer_norm_relu`), and
``SACConfig.execution.compile_critic`` lets inductor fuse them (slower than eager on the CPUs
measured here). ``param_grads=False`` drops the weights from the autograd graph where
only input gradients are wanted (the actor step), so no pass is spent on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)
# Critic members per chunk on a CPU (see CriticEnsemble.forward).
CPU_MEMBER_CHUNK = 2
LOG_2 = math.log(2.0)


def _member_params(layer: nn.Module, members: torch.Tensor | None,
                   param_grads: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A stacked layer's ``(weight, bias)`` for ``members`` (all when ``None``); detached without ``param_grads``."""
    weight, bias = (layer.weight, layer.bias) if param_grads else (layer.weight.detach(), layer.bias.detach())
    if members is not None:
        weight, bias = weight.index_select(0, members), bias.index_select(0, members)
    return weight, bias


class EnsembleLinear(nn.Module):
    """The parameters of ``N`` independent affine maps, applied in one batched matmul by
    :class:`CriticEnsemble` (``torch.baddbmm``; a subset of members by :func:`_member_params`).

    ``weight`` is ``(N, in, out)`` and ``bias`` ``(N, 1, out)``. Each member is
    initialised like ``nn.Linear`` (uniform in ``±1/sqrt(in)``).
    """

    def __init__(self, num_members: int, in_features: int, out_features: int):
        super().__init__()
        self.num_members, self.in_features, self.out_features = num_members, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_members, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last axis with a separate scale and shift per ensemble member."""

    def __init__(self, num_members: int, features: int, eps: float = 1e-5):
        super().__init__()
        self.features, self.eps = features, eps
        self.weight = nn.Parameter(torch.ones(num_members, 1, features))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, features))
        # Not saved: a constant the fast LayerNorm kernel takes as its (identity) weight.
        self.register_buffer("_ones", torch.ones(features), persistent=False)

    def apply_to(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, relu: bool) -> torch.Tensor:
        """The normalisation of ``x (N', B, F)`` with the given (member-selected) ``weight`` and ``bias``;
        ``relu=True`` applies the following ReLU in place."""
        # aten's LayerNorm kernel without an affine weight takes a path about twice as slow on CPU (torch 2.13);
        # a weight of ones gives the same values.
        out = torch.addcmul(bias, F.layer_norm(x, (self.features,), self._ones, None, self.eps), weight)
        return out.relu_() if relu else out


class CriticEnsemble(nn.Module):
    """``N`` Q-functions ``Q_i(features, action)`` as one batched MLP (ReLU, optional LayerNorm)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], num_members: int, layer_norm: bool = True,
                 fused: bool = False):
        super().__init__()
        self.num_members = num_members
        # fused: each hidden layer's bias, LayerNorm, affine and ReLU in one C++ pass (hilrl.policies.sac.fast)
        self.fused = fused and layer_norm
        if self.fused:
            from hilrl.policies.sac.fast import load_layer_norm

            load_layer_norm()  # built now, not inside the first update
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        width = input_dim
        for size in hidden:
            self.linears.append(EnsembleLinear(num_members, width, size))
            self.norms.append(EnsembleLayerNorm(num_members, size) if layer_norm else nn.Identity())
            width = size
        self.head = EnsembleLinear(num_members, width, 1)

    def forward(self, features: torch.Tensor, actions: torch.Tensor,
                members: torch.Tensor | None = None, param_grads: bool = True) -> torch.Tensor:
        """Q-values ``(N', B)`` for ``features (B, F)`` and ``actions (B, A)``.

        ``members`` selects a subset of members; ``param_grads=False`` treats the weights as
        constants, for losses whose gradient is wanted only with respect to the inputs.
        """
        x = torch.cat([features, actions], dim=-1)
        layers = [(*_member_params(linear, members, param_grads), *(
            _member_params(norm, members, param_grads) if isinstance(norm, EnsembleLayerNorm) else (None, None)))
            for linear, norm in zip(self.linears, self.norms)]
        head = _member_params(self.head, members, param_grads)
        members_here = head[0].shape[0]
        if x.device.type != "cpu" or members_here <= CPU_MEMBER_CHUNK:
            return self._run(x, layers, head)
        # On a CPU core, run the members a few at a time through the whole MLP: a chunk's activations stay in
        # cache from one layer to the next (10 critics: 10-17% more updates/s, learner_throughput.py --levers).
        # split() gives views; its backward writes every chunk's gradient into one tensor.
        chunks = -(-members_here // CPU_MEMBER_CHUNK)

        def split(tensor: torch.Tensor | None) -> list:
            return list(tensor.split(CPU_MEMBER_CHUNK)) if tensor is not None else [None] * chunks

        layer_parts = [[split(t) for t in layer] for layer in layers]  # [layer][parameter][chunk]
        head_parts = [split(t) for t in head]
        return torch.cat([self._run(x, [tuple(part[c] for part in layer) for layer in layer_parts],
                                    (head_parts[0][c], head_parts[1][c])) for c in range(chunks)])

    def _run(self, x: torch.Tensor, layers: list[tuple], head: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The MLP on ``x`` with explicit ``(weight, bias, norm weight, norm bias)`` per hidden layer."""
        fused = self.fused and x.device.type == "cpu" and x.dtype == torch.float32
        for (weight, bias, norm_weight, norm_bias), norm in zip(layers, self.norms):
            if x.dim() == 2:
                x = x.unsqueeze(0).expand(weight.shape[0], -1, -1)
            if fused:
                from hilrl.policies.sac.fast import fused_bias_layer_norm_relu

                x = fused_bias_layer_norm_relu(torch.bmm(x, weight), bias, norm_weight, norm_bias, norm.eps)
                continue
            x = torch.baddbmm(bias, x, weight)
            # in-place ReLU is safe: neither baddbmm nor addcmul keeps its output for backward
            x = norm.apply_to(x, norm_weight, norm_bias, relu=True) if norm_weight is not None else x.relu_()
        return torch.baddbmm(head[1], x, head[0]).squeeze(-1)


def mlp(input_dim: int, hidden: Sequence[int], output_dim: int, layer_norm: bool = False) -> nn.Sequential:
    """ReLU MLP; ``layer_norm`` puts a LayerNorm between each hidden layer's linear map and its ReLU (SERL's
    ``MLP(use_layer_norm=True)``)."""
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), *([nn.LayerNorm(size)] if layer_norm else []), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


@torch.no_grad()
def xavier_init_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every linear map in ``module``, ensemble members each on their
    own ``(in, out)`` (RLPD and SERL: ``nn.initializers.xavier_uniform``, zero bias); LayerNorms keep ones/zeros."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, EnsembleLinear):
            bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))
            layer.weight.uniform_(-bound, bound)
            layer.bias.zero_()
    return module


def squashed_log_prob(noise: torch.Tensor, log_std: torch.Tensor, pre_tanh: torch.Tensor) -> torch.Tensor:
    """``log pi(tanh(u))`` ``(B,)`` for ``u = mean + exp(log_std) * noise``: a Gaussian squashed by ``tanh``.

    ``log N(u) - sum log(1 - tanh(u)^2)``, the latter written stably as ``2(log 2 - u - softplus(-2u))``.
    """
    return (-0.5 * noise.pow(2) - log_std - 0.5 * LOG_2PI
            - 2.0 * (LOG_2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)


class TanhGaussianActor(nn.Module):
    """Gaussian policy squashed by ``tanh`` into ``[-1, 1]^A``.

    The log-std is clipped to ``[log_std_min, log_std_max]`` (RLPD's TanhNormal:
    -20 and 2). Sampling takes the standard-normal noise as an argument so that
    callers own the random stream (checkpointable, and replayable in CUDA graphs).
    """

    def __init__(self, input_dim: int, action_dim: int, hidden: Sequence[int],
                 log_std_min: float = -20.0, log_std_max: float = 2.0, layer_norm: bool = False):
        super().__init__()
        self.action_dim = action_dim
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.net = mlp(input_dim, hidden, 2 * action_dim, layer_norm)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-std of the pre-squash Gaussian."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, features: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action ``tanh(mean + std * noise)`` and its log-probability ``(B,)``."""
        mean, log_std = self(features)
        pre_tanh = mean + log_std.exp() * noise
        return torch.tanh(pre_tanh), squashed_log_prob(noise, log_std, pre_tanh)

    def deterministic(self, features: torch.Tensor) -> torch.Tensor:
        """The squashed mean action."""
        return torch.tanh(self(features)[0])
