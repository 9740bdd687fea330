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
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hilrl.errors import HilrlError


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
    reward_type: Literal["dense", "sparse"] = "dense"
    remote: str | None = Field(None, description="robot server address, e.g. tcp://127.0.0.1:5555")

    @field_validator("id")
    @classmethod
    def _known_task(cls, value: str) -> str:
        ids = registered_task_ids()
        if value not in ids:
            raise ValueError(f"unknown task {value!r}; allowed: {', '.join(ids)}")
        return value

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``gymnasium.make(self.id, ...)``."""
        kwargs = self.model_dump(exclude={"id", "remote", "max_episode_steps"})
        kwargs["cameras"] = tuple(self.cameras)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        return kwargs


class DemosConfig(_Strict):
    """Demonstrations for the learner: an existing file, or recorded from the scripted expert."""

    path: str | None = Field(None, description="robomimic-layout .hdf5; None = record with the scripted expert")
    episodes: int = Field(50, ge=0)
    noise: float = Field(0.0, ge=0.0, le=1.0, description="scripted expert's noise knob")


class BCConfig(_Strict):
    """Behaviour cloning: a deterministic MLP regressing demo actions (robomimic's BC, L2 loss)."""

    name: Literal["bc"] = "bc"
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    obs_keys: list[str] | None = Field(None, description="state keys fed to the policy; None = all non-image keys")


AlgoConfig = Annotated[Union[BCConfig], Field(discriminator="name")]


class TrainConfig(_Strict):
    steps: int = Field(3000, ge=1, description="gradient steps (BC) or env steps (RL)")
    seed: int = 0
    eval_episodes: int = Field(50, ge=1)
    log_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    video: bool = True
    threads: int = Field(1, ge=1, description="torch threads; 1 avoids collapse when processes share 2 cores")


class ExperimentConfig(_Strict):
    env: EnvConfig
    demos: DemosConfig = Field(default_factory=DemosConfig)
    algo: AlgoConfig = Field(default_factory=BCConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the field at ``loc`` (to list its allowed keys)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            # a discriminated-union tag such as 'bc' names the chosen member
            return current
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _explain(error: dict[str, Any]) -> str:
    loc = tuple(p for p in error["loc"] if p not in ("bc",))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        owner = _model_at(ExperimentConfig, loc[:-1])
        allowed = sorted(owner.model_fields) if owner else []
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


def dump_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) next to a run's outputs."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
