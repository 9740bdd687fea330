"""Settings of the built-in algorithms BC, DAgger and the SB3 adapters, and their registration
(:mod:`hilrl.policies.registry`); SAC's settings and registration live in :mod:`hilrl.policies.sac.config`.

Each config is a plain dataclass: its fields are the keys allowed under ``algo:`` in an
experiment YAML (SB3-style constructor keywords, each default with its source). They live here,
apart from the algorithms, so that validating a config imports neither torch nor SB3 (except that
an ``sb3.*`` config checks its keywords against the SB3 class it names). The algorithms are
registered by import path and loaded when first built.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

from hilrl.errors import HilrlError
from hilrl.plugins import PluginError, import_object
from hilrl.policies.registry import register_algorithm
from hilrl.policies.sac.config import SACConfig  # noqa: F401  (registers algo: sac, next to its config)


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
            raise HilrlError(f"BCConfig: lr > 0, batch_size >= 1, weight_decay >= 0 and positive hidden widths "
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
            raise HilrlError(f"DAggerConfig.label must be 'all' (DAgger) or 'interventions' (HG-DAgger), "
                             f"got {self.label!r}")
        if self.round_steps < 1 or self.updates_per_round < 1:
            raise HilrlError("DAggerConfig: round_steps and updates_per_round must be >= 1")


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
        return import_object(f"{module}:{cls}", f"algo {name!r}")
    except PluginError:
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
register_algorithm("bc", BCConfig, implementation="hilrl.policies.bc:BC", loop="offline", interventions="ignored",
                   reward_sources=False)
register_algorithm("dagger", DAggerConfig, implementation="hilrl.policies.dagger:DAgger", loop="dagger",
                   reward_sources=False, fixed={"label": "all"})
register_algorithm("hg_dagger", DAggerConfig, implementation="hilrl.policies.dagger:DAgger", loop="dagger",
                   interventions="required", reward_sources=False, fixed={"label": "interventions"})
for _name in SB3_ALGORITHMS:
    register_algorithm(_name, SB3Config, implementation="hilrl.policies.sb3:SB3Agent", loop="sb3",
                       reward_sources=False)
