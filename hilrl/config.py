"""Pydantic models of the YAML experiment files in ``sim_configs/``.

One model per concern, shared by every task (no per-task copies): an
experiment is ``env`` + ``demos`` + ``algo`` + ``train``. ``algo.name`` picks the
algorithm from a registry, robomimic-style. Every validation problem becomes a
:class:`ConfigError` naming the file, the field and what is allowed.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from hilrl.errors import HilrlError
from hilrl.policies.bc import BCConfig
from hilrl.policies.dagger import DAggerConfig
from hilrl.policies.sac import SACConfig
from hilrl.policies.sb3 import SB3Config


class ConfigError(HilrlError):
    """A config file that is missing, not YAML, or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def registered_task_ids() -> list[str]:
    import gymnasium as gym

    import hilrl.envs  # noqa: F401  (registers the tasks)

    return sorted(k for k in gym.registry if k.startswith("hilrl/"))


class EnvConfig(_Strict):
    """Which task to run and how it is observed and controlled (keywords of every hilrl task)."""

    id: str = Field(description="gymnasium id, e.g. hilrl/Reach-v0")
    cameras: list[Literal["front", "wrist"]] = Field(default_factory=list, description="image observations; [] = state only")
    image_size: int = Field(128, ge=16, le=1024)
    control_hz: float = Field(10.0, gt=0, le=1000)
    use_rotation: bool = False
    max_episode_steps: int | None = Field(None, ge=1)
    terminate_on_success: bool = True
    reward_type: Literal["dense", "sparse", "dense_cost"] = "dense"
    relative_positions: bool = Field(False, description="add obs keys tcp_to_object and object_to_goal "
                                     "(hilrl.envs.wrappers.RelativePositions)")
    remote: str | None = Field(None, description="robot server address, e.g. tcp://127.0.0.1:5555")
    client_key: str | None = Field(None, description="remote arm over CurveZMQ: our .key_secret file "
                                   "(`hilrl keys generate`; its .key goes to the server's --allow-keys folder)")
    server_key: str | None = Field(None, description="remote arm over CurveZMQ: the robot server's public .key file")

    @model_validator(mode="after")
    def _keys_need_remote(self) -> EnvConfig:
        if (self.client_key is None) != (self.server_key is None):
            raise ValueError("set both env.client_key (our .key_secret) and env.server_key (the server's .key), "
                             "or neither")
        if self.client_key is not None and self.remote is None:
            raise ValueError("env.client_key/env.server_key authenticate to a robot server: set env.remote too")
        return self

    @field_validator("id")
    @classmethod
    def _known_task(cls, value: str) -> str:
        ids = registered_task_ids()
        if value not in ids:
            raise ValueError(f"unknown task {value!r}; allowed: {', '.join(ids)}")
        return value

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``gymnasium.make(self.id, ...)``."""
        kwargs = self.model_dump(exclude={"id", "remote", "max_episode_steps", "client_key", "server_key",
                                          "relative_positions"})
        kwargs["cameras"] = tuple(self.cameras)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        return kwargs


class DemosConfig(_Strict):
    """Demonstrations for the learner: an existing file, or recorded from the scripted expert."""

    path: str | None = Field(None, description="robomimic-layout .hdf5; None = record with the scripted expert")
    episodes: int = Field(50, ge=0)
    noise: float = Field(0.0, ge=0.0, le=1.0, description="scripted expert's noise knob")


# Each algorithm owns its settings as a dataclass next to its code (SB3-style constructor
# keywords); here they become strict pydantic dataclasses with a ``name`` tag.
_STRICT_DATACLASS = pydantic_dataclass(config=ConfigDict(extra="forbid"))


@_STRICT_DATACLASS
class BCAlgoConfig(BCConfig):
    """``algo:`` for behaviour cloning (:class:`hilrl.policies.bc.BCConfig`)."""

    name: Literal["bc"] = "bc"


@_STRICT_DATACLASS
class SACAlgoConfig(SACConfig):
    """``algo:`` for the RLPD-style SAC learner (:class:`hilrl.policies.sac.SACConfig`)."""

    name: Literal["sac"] = "sac"


@_STRICT_DATACLASS
class DAggerAlgoConfig(DAggerConfig):
    """``algo:`` for DAgger (every visited state labelled by the expert)."""

    name: Literal["dagger"] = "dagger"
    label: Literal["all"] = "all"


@_STRICT_DATACLASS
class HGDAggerAlgoConfig(DAggerConfig):
    """``algo:`` for HG-DAgger (only intervention segments are aggregated)."""

    name: Literal["hg_dagger"] = "hg_dagger"
    label: Literal["interventions"] = "interventions"


@_STRICT_DATACLASS
class SB3AlgoConfig(SB3Config):
    """``algo:`` for Stable-Baselines3 SAC/TD3 and sb3-contrib TQC/CrossQ (:class:`hilrl.policies.sb3.SB3Config`)."""

    name: Literal["sb3.sac", "sb3.td3", "sb3.tqc", "sb3.crossq"] = "sb3.sac"


AlgoConfig = Annotated[Union[BCAlgoConfig, SACAlgoConfig, DAggerAlgoConfig, HGDAggerAlgoConfig, SB3AlgoConfig],
                       Field(discriminator="name")]


class InterventionConfig(_Strict):
    """Who intervenes (a simulated interventionist driving the scripted expert) and how the learner uses it.

    ``learn_from``: ``hil_serl`` keeps the env reward, stores the executed action and
    also copies intervention steps to the demo buffer; ``rlif`` discards the env reward
    and gives -1 to the transition just before each intervention (ALGORITHMS.md).
    """

    source: Literal["none", "value", "distance", "random"] = "none"
    learn_from: Literal["hil_serl", "rlif"] = "hil_serl"
    expert_noise: float = Field(0.0, ge=0.0, le=1.0, description="quality of the intervening expert")
    duration: int | None = Field(None, ge=1, description="expert steps per intervention; None = 4 (value) or 1")
    beta: float = Field(0.97, gt=0.0, description="value gate: Q(s,a_pi) < beta * Q(s,a_ref) (RLIF, Pen)")
    q_ref: str | None = Field(None, description="SAC checkpoint whose critic is Q_ref (value source)")
    threshold: float = Field(1.0, gt=0.0, description="distance gate: ||a_exp - a_pi||_1 >= threshold (HG-DAgger)")
    probability: float = Field(0.1, ge=0.0, le=1.0, description="random source: chance per step")
    p_intervene: float = Field(0.95, ge=0.0, le=1.0)


class TrainConfig(_Strict):
    steps: int = Field(3000, ge=1, description="gradient steps (BC) or env steps (RL)")
    seed: int = 0
    eval_episodes: int = Field(50, ge=1)
    eval_every: int = Field(0, ge=0, description="env steps between evaluations during RL; 0 = only at the end")
    keep_best: bool = Field(False, description="online SAC: save checkpoints/best.pt at each evaluation that beats the "
                            "best so far (validation seeds), and make it the run's policy (robomimic's save on best "
                            "rollout success)")
    log_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    learning_starts: int = Field(500, ge=0, description="RL: env steps before the first update")
    random_steps: int = Field(0, ge=0, description="RL: env steps with uniform random actions at the start")
    buffer_capacity: int = Field(200_000, ge=1, description="RL: online replay size (HIL-SERL: 200k)")
    video: bool = True
    threads: int = Field(1, ge=1, description="torch threads; 1 avoids collapse when processes share 2 cores")


class RuntimeConfig(_Strict):
    """Where the online loop runs: one process (``local``), or a learner fed by actor processes over ZMQ
    (``distributed``, :mod:`hilrl.runtime.learner` and :mod:`hilrl.runtime.actor`). ``runtime: distributed``
    is short for ``runtime: {mode: distributed}``."""

    mode: Literal["local", "distributed"] = "local"
    bind: str = Field("tcp://127.0.0.1:5560", description="learner's transition channel (actors connect here)")
    weights_bind: str | None = Field(None, description="learner's weight broadcast (PUB); None = same host, any port")
    actors: int = Field(1, ge=1, description="actor processes `hilrl train` starts on this machine")
    publish_every: int = Field(50, ge=1, description="learner updates between weight broadcasts (HIL-SERL: 50)")
    max_update_ratio: float | None = Field(1.0, gt=0, description="learner updates per stored transition at most, "
                                           "as the local loop (1); None = update freely (HIL-SERL)")
    ack_timeout_s: float = Field(2.0, gt=0, description="actor re-sends unacknowledged transitions after this")
    max_unacked: int = Field(1000, ge=1, description="actor pauses when this many transitions wait for an ack")
    fsync: bool = Field(False, description="fsync the learner's log before acking and the actor's spool after each "
                        "batch (survives power loss, slower); a completed write alone survives kill -9")
    learner_secret_key: str | None = Field(None, description="learner: its .key_secret (`hilrl keys generate`); turns "
                                           "CurveZMQ on for both learner sockets (required off loopback)")
    allow_keys: str | None = Field(None, description="learner: folder of the public .key files of the actors it accepts")
    actor_secret_key: str | None = Field(None, description="actor: its .key_secret (its .key is in the learner's allow_keys)")
    learner_public_key: str | None = Field(None, description="actor: the learner's public .key")

    @model_validator(mode="before")
    @classmethod
    def _mode_shorthand(cls, value: Any) -> Any:
        return {"mode": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_pairs(self) -> RuntimeConfig:
        for mine, theirs in (("learner_secret_key", "allow_keys"), ("actor_secret_key", "learner_public_key")):
            if (getattr(self, mine) is None) != (getattr(self, theirs) is None):
                raise ValueError(f"set both runtime.{mine} and runtime.{theirs}, or neither")
        return self


class ExperimentConfig(_Strict):
    env: EnvConfig
    demos: DemosConfig = Field(default_factory=DemosConfig)
    algo: AlgoConfig = Field(default_factory=BCAlgoConfig)
    intervention: InterventionConfig = Field(default_factory=InterventionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)


def _fields(cls: Any) -> dict[str, Any]:
    """Pydantic fields of a model or a pydantic dataclass ({} for anything else)."""
    return getattr(cls, "__pydantic_fields__", None) or {}


def _flatten_types(annotation: Any) -> list[Any]:
    """``Annotated[Union[A, B], ...]`` -> ``[..., A, B]``: every type nested in an annotation."""
    return [annotation, *(t for arg in get_args(annotation) for t in _flatten_types(arg))]


def _owner_at(loc: tuple[Any, ...], tag: str | None) -> Any:
    """The model (or dataclass) owning the field at ``loc``, to list its allowed keys."""
    current: Any = ExperimentConfig
    for part in loc:
        field = _fields(current).get(part)
        if field is None:
            continue
        with_fields = [m for m in _flatten_types(field.annotation) if _fields(m)]
        # in a tagged union pick the member the tag names
        names = {m: get_args(getattr(_fields(m).get("name"), "annotation", None)) for m in with_fields}
        tagged = [m for m in with_fields if tag and tag in names[m]]
        current = (tagged or with_fields or [None])[0]
    return current


_TAGS = ("bc", "sac", "dagger", "hg_dagger", "sb3.sac", "sb3.td3", "sb3.tqc", "sb3.crossq")


def _explain(error: dict[str, Any]) -> str:
    tag = next((p for p in error["loc"] if p in _TAGS), None)
    loc = tuple(p for p in error["loc"] if p not in _TAGS)
    where = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        owner = _owner_at(loc[:-1], tag)
        allowed = sorted(_fields(owner)) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown key {where!r}{suggestion}; allowed here: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"missing required key {where!r}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"field {where!r}: {message}{shown}"


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML; ``overrides`` maps dotted keys to values (CLI flags)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pick one of sim_configs/*.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys env, demos, algo, train; got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_explain(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
    except (HilrlError, ValueError) as exc:  # an algorithm config's own range checks
        raise ConfigError(f"{source}: {exc}") from None


def dump_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) next to a run's outputs."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
