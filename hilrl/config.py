"""Pydantic models of the YAML experiment files in ``sim_configs/``.

One model per concern, shared by every task (no per-task copies): an experiment is
``env`` + ``demos`` + ``algo`` + ``intervention`` + ``reward`` + ``train`` + ``runtime``.
``algo.name`` picks the algorithm from the registry (:mod:`hilrl.policies.registry`,
robomimic-style), and the keys allowed under ``algo:`` are that algorithm's config dataclass
fields. Rules across sections (which algorithms take interventions, run distributed, keep
their best checkpoint, train on a reward source) are read from the algorithm's registration.
Every validation problem becomes a :class:`ConfigError` naming the file, the field and what is
allowed. Importing this module imports neither torch nor any algorithm.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from hilrl.errors import HilrlError
from hilrl.policies.registry import algorithm_names, algorithm_spec, tagged_config


class ConfigError(HilrlError):
    """A config file that is missing, not YAML, or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def registered_task_ids() -> list[str]:
    import gymnasium as gym

    import hilrl  # noqa: F401  (registers the tasks without importing MuJoCo)

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
    keep_after_success: int | None = Field(
        None, ge=0, description="cut each demo this many steps after its first success (its last step then "
        "truncated): a demo that goes on after success mostly holds the object at the goal; None = whole demos")
    add_successes: bool = Field(
        False, description="online RL: copy the policy's own successful episodes to the demo buffer too (cut "
        "like the demos), so the demo share of each batch grows with what worked (RLPD's few-demo setting adds "
        "BC rollouts; HIL-SERL keeps adding intervention steps)")
    bc_rollouts: int = Field(
        0, ge=0, description="online RL: episodes of a behaviour-cloning policy fitted on the demos, recorded once "
        "into OUT/bc_rollouts.hdf5 and added to the demo buffer with them, cut like the demos (RLPD's few-demo "
        "setting, ikostrikov/rlpd include_bc_data: the offline data gains the states just off the demos)")


class InterventionConfig(_Strict):
    """Who may take over from the policy during training (door 1), and how intervention steps are stored.

    ``source``: a simulated person driving the scripted expert behind a gate (``value``: RLIF's
    reference-critic gate; ``distance``: HG-DAgger's action-distance gate; ``random``), or a real
    person on a teleop ``device`` (HIL-SERL: the device takes over when it moves beyond ``dead_zone``,
    a held intervene button, or a gripper change; it needs ``pip install 'hilrl[teleop]'``).

    ``learn_from``: ``hil_serl`` also copies intervention steps to the demo buffer (HIL-SERL,
    rail-berkeley/hil-serl); ``rlif`` does not, and the run's reward defaults to RLIF's (Luo et al.
    2023, pd-perry/RLIF: the env reward is discarded and the transition just before each
    intervention gets -1; see the ``reward:`` section).
    """

    source: Literal["none", "value", "distance", "random", "device"] = "none"
    learn_from: Literal["hil_serl", "rlif"] = "hil_serl"
    device: Literal["keyboard", "gamepad", "spacemouse"] | None = Field(
        None, description="source: device: the person's teleop device (README, Teleoperation)")
    dead_zone: float = Field(0.05, ge=0.0, description="source: device: motion (action units) below which the policy "
                             "keeps control (HIL-SERL's near-zero threshold; 0.05 ignores a resting hand)")
    expert_noise: float = Field(0.0, ge=0.0, le=1.0, description="quality of the intervening expert")
    duration: int | None = Field(None, ge=1, description="expert steps per intervention; None = 4 (value) or 1")
    beta: float = Field(0.97, gt=0.0, description="value gate: Q(s,a_pi) < beta * Q(s,a_ref) (RLIF, Pen)")
    q_ref: str | None = Field(None, description="run folder whose SAC critic is Q_ref (value source); built there "
                              "on first use when missing (hilrl.runtime.reference)")
    q_ref_steps: int = Field(8000, ge=1, description="env steps of the SAC run that builds a missing q_ref")
    threshold: float = Field(1.0, gt=0.0, description="distance gate: ||a_exp - a_pi||_1 >= threshold (HG-DAgger)")
    probability: float = Field(0.1, ge=0.0, le=1.0, description="random source: chance per step")
    p_intervene: float = Field(0.95, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _device_with_source(self) -> InterventionConfig:
        if self.source == "device" and self.device is None:
            raise ValueError("intervention.source 'device' needs intervention.device: keyboard, gamepad or spacemouse")
        if self.device is not None and self.source != "device":
            raise ValueError(f"intervention.device {self.device!r} is used with intervention.source: device (got "
                             f"source {self.source!r}); set source: device or remove device")
        if self.source == "value" and not self.q_ref:
            raise ValueError("intervention.source 'value' needs intervention.q_ref: a run folder of a SAC run on the "
                             "task's dense reward (built there on first use)")
        return self

    @property
    def learning_rule(self) -> Literal["hil_serl", "rlif"] | None:
        """``learn_from`` when someone can intervene, else ``None`` (nothing to learn from)."""
        return None if self.source == "none" else self.learn_from


class RewardConfig(_Strict):
    """What the learner trains on (door 2): one reward source, or a weighted sum of them.

    ``source``: ``env`` (the task's own reward), ``rlif`` (RLIF's relabelling from the stored
    intervention flags), ``term`` (one of the task's named reward terms, ``info["reward_terms"]``,
    chosen by ``term``), ``sum`` (``weight``-ed sum of ``parts``), or ``module:factory``: a callable
    returning a :class:`hilrl.feedback.rewards.RewardSource`, called with ``kwargs``. ``reward: rlif``
    is short for ``reward: {source: rlif}``. Without a ``reward:`` section the source is ``rlif``
    when interventions are learned from as RLIF (``intervention.learn_from: rlif``), else ``env``.
    """

    source: str = "env"
    weight: float = Field(1.0, description="this source's weight inside a sum")
    term: str | None = Field(None, description="source: term: the name of the task's reward term")
    parts: list[RewardConfig] = Field(default_factory=list, description="source: sum: the sources added")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="source: module:factory: its keyword arguments")
    path: str | None = Field(None, description="source: code: the file of LLM-written reward code (run in the "
                             "sandbox), e.g. the best/reward.py of `hilrl reward-search`")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _complete(self) -> RewardConfig:
        from hilrl.feedback.rewards import reward_source_names  # (numpy only; the names sources registered)

        known = reward_source_names()
        if self.source not in known and ":" not in self.source:
            raise ValueError(f"reward source {self.source!r} is neither one of {', '.join(known)} nor an import path "
                             "'module:factory'")
        if (self.source == "term") != (self.term is not None):
            raise ValueError("reward source 'term' needs term: NAME (a key of the task's info['reward_terms']), and "
                             "term: is used only with source: term")
        if (self.source == "sum") != bool(self.parts):
            raise ValueError("reward source 'sum' needs parts: [{source: ..., weight: ...}, ...], and parts: is used "
                             "only with source: sum")
        if (self.source == "code") != (self.path is not None):
            raise ValueError("reward source 'code' needs path: FILE (reward code, e.g. the best/reward.py a "
                             "`hilrl reward-search` wrote), and path: is used only with source: code")
        return self

    def uses(self, name: str) -> bool:
        """Whether source ``name`` appears in this reward (in a sum too)."""
        return self.source == name or any(part.uses(name) for part in self.parts)


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
    (``distributed``, :mod:`hilrl.runtime.distributed.learner` and :mod:`hilrl.runtime.distributed.actor`). ``runtime: distributed``
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
    algo: Any = Field(default_factory=lambda: tagged_config("bc")())
    intervention: InterventionConfig = Field(default_factory=InterventionConfig)
    reward: RewardConfig | None = Field(None, description="door 2; None: rlif when intervention.learn_from is rlif, "
                                        "else env")
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("algo", mode="before")
    @classmethod
    def _algorithm_config(cls, value: Any) -> Any:
        """A mapping becomes the registered config of its ``name`` (:func:`validate_config` explains mistakes)."""
        if not isinstance(value, dict):
            return value
        try:
            return parse_algo(value)
        except ValidationError as exc:
            raise ValueError("; ".join(_explain(e, ("algo",)) for e in exc.errors())) from None

    @property
    def reward_config(self) -> RewardConfig:
        """The reward the learner trains on, with the default of the ``reward:`` section filled in."""
        if self.reward is not None:
            return self.reward
        return RewardConfig(source="rlif" if self.intervention.learning_rule == "rlif" else "env")

    @model_validator(mode="after")
    def _fits_the_algorithm(self) -> ExperimentConfig:
        """Rules across sections, read from the algorithm's registration (:class:`AlgorithmSpec`)."""
        name, spec = self.algo.name, algorithm_spec(self.algo.name)
        tc, ic = self.train, self.intervention
        distributed = self.runtime.mode == "distributed"
        if distributed and not spec.distributed:
            names = ", ".join(algorithm_names(distributed=True))
            raise ValueError(f"runtime.mode: distributed trains algo.name {names}, not {name!r}; use runtime: local "
                             "for it")
        if tc.keep_best and not (spec.keep_best and not distributed and tc.eval_every):
            raise ValueError("train.keep_best works in the online SAC loop (algo.name: sac, runtime: local) with "
                             "train.eval_every > 0; remove it or change those settings")
        if spec.interventions == "required" and ic.source == "none":
            raise ValueError(f"intervention.source: algo {name!r} learns from interventions; set it (e.g. distance)")
        if spec.interventions == "ignored" and ic.source != "none":
            raise ValueError(f"intervention.source {ic.source!r}: algo {name!r} trains offline on the demos and never "
                             "acts during training; remove the intervention section")
        reward = self.reward_config
        if reward.source != "env" and not spec.reward_sources:
            what = ("intervention.learn_from 'rlif'" if self.reward is None
                    else f"reward source {reward.source!r}")
            raise ValueError(f"{what} is not supported with algo {name!r} (it trains on the env reward, it cannot "
                             "relabel rewards); use learn_from: hil_serl, or algo: sac for RLIF and reward sources")
        if reward.uses("rlif") and ic.source == "none":
            raise ValueError("reward: rlif learns from interventions (-1 before each), but intervention.source is "
                             "none; set intervention.source or another reward source")
        if spec.loop == "sb3" and tc.random_steps:
            raise ValueError(f"train.random_steps is not used by {name!r}: SB3 acts uniformly at random for the first "
                             "train.learning_starts steps; set random_steps: 0 and tune learning_starts")
        if self.demos.bc_rollouts and (spec.loop != "online" or distributed or not (self.demos.path or
                                                                                    self.demos.episodes)):
            raise ValueError(f"demos.bc_rollouts records a BC policy fitted on the demos for the online loop (runtime: "
                             f"local, e.g. algo: sac, with demos.episodes > 0 or demos.path); algo {name!r} with "
                             f"runtime {self.runtime.mode!r} and {self.demos.episodes} demos cannot; remove it")
        if self.demos.add_successes and (spec.loop != "online" or distributed):
            raise ValueError(f"demos.add_successes copies successful episodes in the online loop (runtime: local, "
                             f"e.g. algo: sac); algo {name!r} with runtime {self.runtime.mode!r} does not; remove it")
        if spec.loop in ("offline", "dagger") and not (self.demos.path or self.demos.episodes):
            raise ValueError(f"demos: algo {name!r} starts from behaviour cloning; set demos.episodes > 0 or "
                             "demos.path")
        return self


def parse_algo(raw: Any) -> Any:
    """The ``algo:`` section as the registered config of its ``name`` (a strict pydantic dataclass).

    Raises ``ValidationError`` (locations relative to ``algo``) or ``HilrlError``/``ValueError`` from the
    config's own range checks.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"algo must be a mapping with a name (one of {', '.join(algorithm_names())}), "
                         f"got {type(raw).__name__}")
    name = raw.get("name", "bc")
    if name not in algorithm_names():
        raise ValueError(f"field 'algo.name': unknown algorithm {name!r}; allowed: "
                         f"{', '.join(repr(n) for n in algorithm_names())}")
    return TypeAdapter(tagged_config(name)).validate_python({**raw, "name": name})


def _fields(cls: Any) -> dict[str, Any]:
    """Pydantic fields of a model or a pydantic dataclass ({} for anything else)."""
    return getattr(cls, "__pydantic_fields__", None) or {}


def _flatten_types(annotation: Any) -> list[Any]:
    """``Annotated[Union[A, B], ...]`` -> ``[..., A, B]``: every type nested in an annotation."""
    return [annotation, *(t for arg in get_args(annotation) for t in _flatten_types(arg))]


def _owner_at(loc: tuple[Any, ...]) -> Any:
    """The model (or dataclass) owning the field at ``loc``, to list its allowed keys."""
    current: Any = ExperimentConfig
    for part in loc:
        field = _fields(current).get(part)
        if field is None:
            continue
        with_fields = [m for m in _flatten_types(field.annotation) if _fields(m)]
        current = (with_fields or [None])[0]
    return current


def _explain(error: dict[str, Any], prefix: tuple[str, ...] = (), owner: Any = None) -> str:
    """One readable sentence for a pydantic error; ``prefix`` and ``owner`` place errors of a section
    validated on its own (the ``algo:`` section, validated by its algorithm's config class)."""
    loc = (*prefix, *error["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        parent = owner if owner is not None and len(error["loc"]) == 1 else _owner_at(loc[:-1])
        allowed = sorted(_fields(parent)) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown key {where!r}{suggestion}; allowed here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"missing required key {where!r}"
    if not loc:  # a rule across sections: the message names its fields
        return message
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
        raise ConfigError(f"{path}: expected a mapping with keys env, demos, algo, intervention, reward, train, "
                          f"runtime; got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate an experiment given as a mapping; every problem is named in one :class:`ConfigError` line."""
    raw = dict(raw)
    if "task" in raw and "env" not in raw:
        raise ConfigError(f"{source}: a correction-session config (it names a 'task' variant, no 'env'); run it "
                          "with `hilrl correct` (hilrl train takes an experiment with env/algo/train sections)")
    algo = raw.get("algo", {"name": "bc"})
    try:
        raw["algo"] = parse_algo(algo) if isinstance(algo, dict) else algo
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        if raw["algo"] is algo and isinstance(algo, dict):  # the algo section itself failed
            owner = tagged_config(algo.get("name", "bc"))
            problems = [_explain(e, ("algo",), owner) for e in exc.errors()]
        else:
            problems = [_explain(e) for e in exc.errors()]
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None
    except (HilrlError, ValueError) as exc:  # an algorithm config's own range checks
        raise ConfigError(f"{source}: {exc}") from None


def dump_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) next to a run's outputs."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
