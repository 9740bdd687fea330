"""Settings of the built-in algorithms, and their registration (:mod:`hilrl.policies.registry`).

Each config is a plain dataclass: its fields are the keys allowed under ``algo:`` in an
experiment YAML (SB3-style constructor keywords, each default with its source). They live here,
apart from the algorithms, so that validating a config imports neither torch nor SB3 (except that
an ``sb3.*`` config checks its keywords against the SB3 class it names). The algorithms are
registered by import path and loaded when first built.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, fields
from typing import Any

from hilrl.errors import HilrlError
from hilrl.policies.registry import register_algorithm


@dataclass
class SACConfig:
    """Every setting of the SAC/RLPD learner, with the source of each default.

    Defaults follow HIL-SERL's state-based learner where it and RLPD agree, and
    RLPD/RLIF otherwise (RLPD: Ball et al. 2023, ikostrikov/rlpd; HIL-SERL: Luo et al. 2024,
    rail-berkeley/hil-serl @ 5d02aed; RLIF: Luo et al. 2023, pd-perry/RLIF @ d177b9b, ``configs/rlpd_config.py``;
    LeRobot's HIL-SERL port, huggingface/lerobot). ``SACConfig.rlif()`` and
    ``SACConfig.hil_serl()`` give the two published configurations.

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
        kl_coef: lambda of Demonstration-Regularized RL; with ``kl_coef > 0`` the term ``alpha * log pi``
            becomes ``kl_coef * (log pi - log pi_BC)`` and alpha is not tuned. ``pi_BC`` is the ``bc_policy``
            passed to :class:`SAC`, or else a :class:`~hilrl.policies.bc_prior.GaussianBCPrior` fitted on the
            demo buffer at the first :meth:`SAC.train_step` and saved in checkpoints.
        bc_proposal: IBRL (Imitation Bootstrapped RL, Hu et al. 2023, arXiv:2311.02198): the BC prior's
            mean action ``tanh(mu_BC(s))`` competes with the actor's action wherever an action is chosen by
            value. When acting, the one with the higher critic value (mean over the ensemble) is taken; in the
            critic target, ``V(s') = max(min_i Q'_i(s', a'_RL) - reg, min_i Q'_i(s', a'_BC))``. The prior is the
            same :class:`~hilrl.policies.bc_prior.GaussianBCPrior` the KL term uses, fitted on the demo buffer
            at the first :meth:`SAC.train_step`. False (RLPD, HIL-SERL). For few demos: the policy starts at
            the imitation policy's level instead of the untrained actor's.
        bc_prior_updates: maximum-likelihood steps of that fit (batch ``batch_size``, Adam 1e-3).
        bc_prior_min_std: floor of that prior's pre-tanh std, 0.2 (ours; the paper's prior is not squashed).
            A demonstrator that is deterministic would otherwise give a prior too sharp to regularise towards.
        image_latent_dim: features per image key, 50 (DrQ).
        image_channels, image_strides: conv stack of the image encoder, 4 x 32 channels, strides
            (2, 1, 1, 1) (DrQ). HIL-SERL uses a pretrained ResNet-10 instead (not bundled).
        image_pad: pixels of replicate padding for the random-shift augmentation, 4 (DrQ).
        augment: apply random shift to images in updates (DrQ, SERL, HIL-SERL).
        freeze_encoder: keep the image encoder fixed (HIL-SERL freezes its pretrained encoder).
        normalize_obs: standardise state features by a per-dimension mean and std fitted once, at the
            first :meth:`SAC.train_step`, on every transition then in the demo and online buffers, and
            frozen afterwards (saved with the networks). Off by default as in RLPD (raw states); turning it
            on took Reach from 10% to 90% eval success at 2000 env steps (see :mod:`hilrl.policies.encoders`).
        obs_norm_min_std: floor of that std, so near-constant dimensions are not blown up.
        obs_norm_clip: standardised state features are clipped to ``[-obs_norm_clip, obs_norm_clip]``.
        bc_coef: weight of a behaviour-cloning term in the actor loss on the demo rows of each batch,
            ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2``. 0 (RLPD, HIL-SERL: none). The ``mean|Q|``
            factor is TD3+BC's normalisation (Fujimoto & Gu 2021: alpha 2.5 there is ``bc_coef = 0.4``), so the
            setting does not depend on the reward scale. It helps where few demos must guide a long,
            precise task (PickCube) faster than the critic alone can.
        compile_critic: run the online and target critic ensembles through ``torch.compile`` (inductor),
            which fuses the LayerNorm/affine/ReLU passes eager PyTorch makes over every ``(N, B, hidden)``
            activation. Speed only (same maths; floating-point results differ in the last bits). The first
            updates compile (seconds to a minute); on CPU it needs a C++ compiler. Off by default; see
            ``benchmarks/learner_throughput.py`` for what it buys on your machine. Not with ``cuda_graph``.
        fused_layer_norm: on CPU, run each critic hidden layer's bias, LayerNorm, affine and ReLU as one C++
            pass forward and one backward (:mod:`hilrl.policies.kernels`) instead of eager PyTorch's dozen.
            Speed only (same maths, last-bit differences). The first learner built compiles the kernel
            (about a minute, then cached); needs a C++ compiler and ninja. Off by default. Not with
            ``compile_critic``.
        cpu_fused_update: on CPU, run the whole update (``utd`` critic steps, actor, temperature, Adam and
            Polyak) as one C++ call with the forward and backward passes written out, no autograd
            (:mod:`hilrl.policies.fused_update`). Speed only (same maths and noise, last-bit differences);
            the eager update stays the reference. State observations only, and not with ``kl_coef``,
            ``bc_proposal``, ``max_grad_norm``, ``critic_layer_norm=False``, ``actor_layer_norm``,
            ``actor_batch="whole"``, ``compile_critic`` or ``cuda_graph`` (the learner refuses them). The first learner built compiles it (about a minute, then cached); needs a C++
            compiler and ninja. Off by default.
        device: where networks live and updates run: ``auto`` (CUDA when torch sees a GPU, else CPU),
            ``cpu``, ``cuda`` or ``cuda:N``.
        cuda_graph: capture the whole update as one CUDA graph after three eager warm-up updates (CUDA
            only; removes Python and kernel-launch overhead: the fastest learner on a GPU, see
            ``benchmarks/learner_throughput.py --device cuda``). Not with ``compile_critic``.
    """

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
    kl_coef: float = 0.0
    bc_proposal: bool = False
    bc_prior_updates: int = 2000
    bc_prior_min_std: float = 0.2
    image_latent_dim: int = 50
    image_channels: tuple[int, ...] = (32, 32, 32, 32)
    image_strides: tuple[int, ...] = (2, 1, 1, 1)
    image_pad: int = 4
    augment: bool = True
    freeze_encoder: bool = False
    normalize_obs: bool = False
    obs_norm_min_std: float = 0.05
    obs_norm_clip: float = 10.0
    bc_coef: float = 0.0
    compile_critic: bool = False
    fused_layer_norm: bool = False
    cpu_fused_update: bool = False
    device: str = "auto"
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.image_channels = tuple(int(c) for c in self.image_channels)
        self.image_strides = tuple(int(s) for s in self.image_strides)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        checks = [
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
            (self.kl_coef >= 0.0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.bc_prior_updates >= 1, f"bc_prior_updates must be >= 1, got {self.bc_prior_updates}"),
            (self.bc_prior_min_std > 0, f"bc_prior_min_std must be > 0, got {self.bc_prior_min_std}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}"),
            (min(self.actor_lr, self.critic_lr, self.temperature_lr) > 0, "learning rates must be > 0"),
            (self.obs_norm_min_std > 0, f"obs_norm_min_std must be > 0, got {self.obs_norm_min_std}"),
            (self.obs_norm_clip > 0, f"obs_norm_clip must be > 0, got {self.obs_norm_clip}"),
            (self.bc_coef >= 0.0, f"bc_coef must be >= 0, got {self.bc_coef}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}"),
            (not (self.cuda_graph and self.device == "cpu"), "cuda_graph needs device auto or cuda, not cpu"),
            (not (self.cuda_graph and self.compile_critic),
             "cuda_graph and compile_critic do not combine; choose one (on CUDA the graph removes more overhead)"),
        ]
        for ok, message in checks:
            if not ok:
                raise HilrlError(f"SACConfig: {message}")

    @property
    def critic_actor_ratio(self) -> int:
        """HIL-SERL/SERL's name for :attr:`utd` (critic steps per actor step)."""
        return self.utd

    @classmethod
    def rlif(cls, **overrides: Any) -> SACConfig:
        """RLIF's RLPD configuration (pd-perry/RLIF, ``configs/rlpd_config.py``)."""
        values = dict(num_critics=10, hidden=(256, 256, 256), gamma=0.99, backup_entropy=False, utd=5)
        return cls(**{**values, **overrides})

    @classmethod
    def hil_serl(cls, **overrides: Any) -> SACConfig:
        """HIL-SERL's learner (rail-berkeley/hil-serl): 2 critics, gamma 0.97, critic-to-actor ratio 2."""
        values = dict(num_critics=2, hidden=(256, 256), gamma=0.97, utd=2, freeze_encoder=True)
        return cls(**{**values, **overrides})


@dataclass
class BCConfig:
    """Settings of :class:`BC` (robomimic's BC defaults, except a 1e-3 learning rate).

    Attributes:
        hidden: hidden widths of the MLP.
        lr, weight_decay: AdamW settings.
        batch_size: demo transitions per gradient step.
        obs_keys: state keys fed to the policy; ``None`` = every non-image key.
    """

    hidden: tuple[int, ...] = (256, 256)
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    obs_keys: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        if self.lr <= 0 or self.batch_size < 1 or self.weight_decay < 0 or not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"BCConfig: lr > 0, batch_size >= 1, weight_decay >= 0 and positive hidden widths "
                             f"are required, got {self}")


@dataclass
class DAggerConfig(BCConfig):
    """:class:`BCConfig` plus the aggregation schedule.

    Attributes:
        round_steps: env steps collected between two retrainings.
        updates_per_round: gradient steps after each round (and on the demos before the first).
        label: ``all`` (DAgger: every visited state) or ``interventions`` (HG-DAgger).
    """

    round_steps: int = 500
    updates_per_round: int = 500
    label: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label not in ("all", "interventions"):
            raise ValueError(f"DAggerConfig.label must be 'all' (DAgger) or 'interventions' (HG-DAgger), "
                             f"got {self.label!r}")
        if self.round_steps < 1 or self.updates_per_round < 1:
            raise ValueError("DAggerConfig: round_steps and updates_per_round must be >= 1")


# config name -> (module, class, pip package)
SB3_ALGORITHMS: dict[str, tuple[str, str, str]] = {
    "sb3.sac": ("stable_baselines3", "SAC", "stable-baselines3"),
    "sb3.td3": ("stable_baselines3", "TD3", "stable-baselines3"),
    "sb3.tqc": ("sb3_contrib", "TQC", "sb3-contrib"),
    "sb3.crossq": ("sb3_contrib", "CrossQ", "sb3-contrib"),
}

# Fields of SB3Config that are hilrl's own, not SB3 constructor keywords.
_OWN_FIELDS = ("name", "obs_keys", "demo_fraction", "action_noise", "net_arch")


def sb3_class(name: str) -> type:
    """The SB3 (or sb3-contrib) class an ``algo.name`` such as ``sb3.tqc`` stands for."""
    if name not in SB3_ALGORITHMS:
        raise HilrlError(f"unknown SB3 algorithm {name!r}; allowed: {', '.join(SB3_ALGORITHMS)}")
    module, cls, package = SB3_ALGORITHMS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        raise HilrlError(f"algo {name!r} needs the {package} package: pip install {package}") from None


@dataclass
class SB3Config:
    """Settings of an SB3 off-policy algorithm; SB3 keywords keep SB3's names and meanings.

    Attributes:
        name: ``sb3.sac``, ``sb3.td3``, ``sb3.tqc`` or ``sb3.crossq`` (the last two need sb3-contrib).
        obs_keys: state keys the policy sees (``None``: every 1-D key of the task).
        demo_fraction: share of each batch drawn from the demo buffer, 0.5 (RLPD symmetric sampling,
            HIL-SERL 128 + 128); all online when there are no demos.
        action_noise: std of Gaussian exploration noise added to the policy's action
            (``NormalActionNoise``). ``None``: SB3's default (no noise; TD3 users usually set 0.1).
        net_arch: hidden widths for actor and critic (``policy_kwargs.net_arch``); ``None``: SB3's
            default ((256, 256) for SAC/TQC, (400, 300) for TD3).
        learning_rate, batch_size, tau, gamma, train_freq, gradient_steps, ent_coef, target_entropy,
        target_update_interval, use_sde, policy_delay, target_policy_noise, target_noise_clip,
        top_quantiles_to_drop_per_net, policy_kwargs, device: passed to the SB3 class unchanged;
            ``None`` leaves SB3's default. Train-loop settings (``buffer_size``, ``learning_starts``,
            ``seed``) come from the ``train:`` section.
    """

    name: str = "sb3.sac"
    obs_keys: tuple[str, ...] | None = None
    demo_fraction: float = 0.5
    action_noise: float | None = None
    net_arch: tuple[int, ...] | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    tau: float | None = None
    gamma: float | None = None
    train_freq: int | None = None
    gradient_steps: int | None = None
    ent_coef: float | str | None = None
    target_entropy: float | str | None = None
    target_update_interval: int | None = None
    use_sde: bool | None = None
    policy_delay: int | None = None
    target_policy_noise: float | None = None
    target_noise_clip: float | None = None
    top_quantiles_to_drop_per_net: int | None = None
    policy_kwargs: dict[str, Any] | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        if self.net_arch is not None:
            self.net_arch = tuple(int(h) for h in self.net_arch)
        if not 0.0 <= self.demo_fraction <= 1.0:
            raise HilrlError(f"algo.demo_fraction must be within [0, 1], got {self.demo_fraction}")
        if self.action_noise is not None and self.action_noise < 0:
            raise HilrlError(f"algo.action_noise is a standard deviation and must be >= 0, got {self.action_noise}")
        if self.net_arch is not None and (not self.net_arch or min(self.net_arch) < 1):
            raise HilrlError(f"algo.net_arch must list positive widths, got {self.net_arch}")
        if self.net_arch is not None and "net_arch" in (self.policy_kwargs or {}):
            raise HilrlError("algo.net_arch and algo.policy_kwargs.net_arch both given; keep one")
        accepted = set(inspect.signature(sb3_class(self.name).__init__).parameters)
        for key, value in self.sb3_kwargs().items():
            if key not in accepted:
                cls = SB3_ALGORITHMS[self.name][1]
                raise HilrlError(f"algo.{key} is not a keyword of {cls} ({self.name}); remove it or pick an "
                                 f"algorithm that takes it")

    def sb3_kwargs(self) -> dict[str, Any]:
        """The SB3 constructor keywords this config sets (``None`` ones left to SB3)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OWN_FIELDS}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if self.net_arch is not None:
            kwargs["policy_kwargs"] = {**(self.policy_kwargs or {}), "net_arch": list(self.net_arch)}
        return kwargs



# ---------------------------------------------------------------------------- registrations
# algo.name -> config and implementation; see hilrl.policies.registry.AlgorithmSpec for the keywords.
register_algorithm("sac", SACConfig, implementation="hilrl.policies.sac:SAC", loop="online", distributed=True,
                   keep_best=True)
register_algorithm("bc", BCConfig, implementation="hilrl.policies.bc:BC", loop="offline", interventions="ignored",
                   reward_sources=False)
register_algorithm("dagger", DAggerConfig, implementation="hilrl.policies.dagger:DAgger", loop="dagger",
                   reward_sources=False, fixed={"label": "all"})
register_algorithm("hg_dagger", DAggerConfig, implementation="hilrl.policies.dagger:DAgger", loop="dagger",
                   interventions="required", reward_sources=False, fixed={"label": "interventions"})
for _name in SB3_ALGORITHMS:
    register_algorithm(_name, SB3Config, implementation="hilrl.policies.sb3:SB3Agent", loop="sb3",
                       reward_sources=False)
