"""Pydantic models of the YAML experiment files in ``sim_configs/``.

One model per concern, shared by every task (no per-task copies): an experiment is
``env`` + ``demos`` + ``algo`` + ``intervention`` + ``reward`` + ``train`` + ``runtime``.
``algo.name`` picks the algorithm from the registry (:mod:`hilrl.policies.registry`,
robomimic-style), and the keys allowed under ``algo:`` are that algorithm's config dataclass
fields (a field that is itself a dataclass is a section, e.g. ``algo.variants.bc_coef`` of SAC).
Rules across sections (which algorithms take interventions, run distributed, keep their best
checkpoint, train on a reward source) are read from the algorithm's registration.
Every validation problem becomes a :class:`ConfigError` naming the file, the field and what is
allowed. Importing this module imports neither torch nor any algorithm.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


def is_hilrl_task(env_id: str) -> bool:
    """Whether ``env_id`` is one of hilrl's own tasks (``hilrl/...``); every other id is a foreign env, run through
    an env adapter (:mod:`hilrl.envs.adapter`)."""
    return env_id.startswith("hilrl/")


# keywords of hilrl's own tasks; a foreign env takes its own through env.kwargs
HILRL_ONLY_KEYS = ("cameras", "image_size", "control_hz", "use_rotation", "terminate_on_success", "reward_type",
                   "relative_positions", "remote", "client_key", "server_key")
# keys that only mean something on a foreign env
FOREIGN_ONLY_KEYS = ("package", "kwargs", "adapter", "success_key", "action_map")


class ActionMapConfig(_Strict):
    """Which action dimensions of a foreign env a person's teleop device (and hilrl's arm-action experts) drive.

    A teleop device makes hilrl's arm action ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` in [-1, 1] (gripper
    absolute: -1 closed, +1 open); this map puts each part at the env's dimensions, scaled. Dimensions it does not
    name are 0.
    """

    xyz: list[int] = Field(description="the env's action dimensions of the x, y, z motion, e.g. [0, 1, 2]")
    rotation: list[int] | None = Field(None, description="the env's dimensions of roll, pitch, yaw motion; None = "
                                       "the env has none (the device's rotation is dropped)")
    gripper: int | None = Field(None, description="the env's gripper dimension; None = no gripper")
    gripper_sign: Literal[1, -1] = Field(1, description="+1: the env's gripper action is +1 open, -1 closed (hilrl's);"
                                         " -1: +1 closes (gym-hil's)")
    gripper_scale: float = Field(1.0, gt=0, description="multiplies the gripper command (after the sign)")
    translation_scale: float = Field(1.0, gt=0, description="multiplies the device's xyz motion (the env's units "
                                     "per unit of device motion, in the adapter's [-1, 1] action)")
    rotation_scale: float = Field(1.0, gt=0, description="multiplies the device's rotation")

    @model_validator(mode="after")
    def _distinct(self) -> ActionMapConfig:
        if len(self.xyz) != 3 or (self.rotation is not None and len(self.rotation) != 3):
            raise ValueError("env.action_map: xyz (and rotation, when given) name 3 action dimensions each")
        dims = [*self.xyz, *(self.rotation or []), *([] if self.gripper is None else [self.gripper])]
        if len(set(dims)) != len(dims) or min(dims) < 0:
            raise ValueError(f"env.action_map: each action dimension once and >= 0, got {dims}")
        return self


class EnvConfig(_Strict):
    """Which task to run and how it is observed and controlled.

    ``id`` is a hilrl task (``hilrl/...``, whose keywords are this section's: cameras, reward_type, ...) or any
    registered gymnasium id, a *foreign* env: its keywords go in ``kwargs`` (to ``gymnasium.make``), ``package``
    names the module that registers it (imported when the id is validated: the id cannot be checked otherwise,
    and a config naming a package means to run it), and an env adapter (:mod:`hilrl.envs.adapter`) presents it
    as hilrl sees its own tasks. hilrl-only keys are refused on a foreign env.
    """

    id: str = Field(description="gymnasium id: a hilrl task, e.g. hilrl/Reach-v0, or any registered id, e.g. "
                    "gym_hil/PandaPickCubeBase-v0 or Pendulum-v1 (a foreign env)")
    package: str | None = Field(None, description="foreign env: a module imported before the id is looked up (it "
                                "registers the id), e.g. gym_hil; default: the id's namespace, if it imports")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="foreign env: keyword arguments of "
                                   "gymnasium.make, e.g. {image_obs: true}")
    adapter: str = Field("gymnasium", description="foreign env: the registered env adapter that presents it to hilrl "
                         "(hilrl.envs.adapter.ENV_ADAPTERS), or a plugin's")
    success_key: str | None = Field(None, description="foreign env: the info key that says the episode succeeded; "
                                    "None tries is_success, success, succeed")
    action_map: ActionMapConfig | None = Field(None, description="foreign env: which action dimensions a teleop "
                                               "device drives (xyz, rotation, gripper and its sign)")
    expert: str | None = Field(None, description="a scripted policy 'module:callable', a factory f(env, noise, seed) "
                               "-> expert with reset() and expert(obs) -> action; records demos and intervenes as a "
                               "simulated person, for any env (a hilrl task's too). None = the id's own (hilrl tasks, "
                               "gym-hil's pick)")
    cameras: list[Literal["front", "wrist"]] = Field(default_factory=list, description="image observations; [] = "
                                                     "state only")
    image_size: int = Field(128, ge=16, le=1024, description="camera image width and height in pixels")
    control_hz: float = Field(10.0, gt=0, le=1000, description="policy steps per second")
    use_rotation: bool = Field(False, description="7-d actions with roll, pitch, yaw motion (else 4-d)")
    max_episode_steps: int | None = Field(None, ge=1, description="time limit in steps; None = the env's own")
    terminate_on_success: bool = Field(True, description="end the episode at success")
    reward_type: Literal["dense", "sparse", "dense_cost"] = Field("dense", description="the task's reward")
    relative_positions: bool = Field(False, description="add obs keys tcp_to_object and object_to_goal "
                                     "(hilrl.envs.wrappers.RelativePositions)")
    remote: str | None = Field(None, description="robot server address, e.g. tcp://127.0.0.1:5555")
    client_key: str | None = Field(None, description="remote arm over CurveZMQ: our .key_secret file "
                                   "(`hilrl keys generate`; its .key goes to the server's --allow-keys folder)")
    server_key: str | None = Field(None, description="remote arm over CurveZMQ: the robot server's public .key file")

    @model_validator(mode="before")
    @classmethod
    def _import_package(cls, value: Any) -> Any:
        """Import ``package`` (or the id's namespace) first: the id is known to gymnasium only after it."""
        if isinstance(value, dict) and isinstance(value.get("id"), str) and not is_hilrl_task(value["id"]):
            from hilrl.envs.adapter import import_env_package

            import_env_package(value["id"], value.get("package"))
        return value

    @property
    def foreign(self) -> bool:
        """Whether the id is not a hilrl task (it runs through an env adapter)."""
        return not is_hilrl_task(self.id)

    def _changed(self, keys: Iterable[str]) -> list[str]:
        """Those of ``keys`` set to other than their default (a dumped config sets every key, to its default)."""
        fields = type(self).model_fields
        return [key for key in keys if key in self.model_fields_set
                and getattr(self, key) != fields[key].get_default(call_default_factory=True)]

    @model_validator(mode="after")
    def _keys_need_remote(self) -> EnvConfig:
        if self.foreign:
            given = self._changed(HILRL_ONLY_KEYS)
            if given:
                raise ValueError(f"env.{', env.'.join(given)}: keyword(s) of hilrl's own tasks, not of {self.id!r}; "
                                 f"give {self.id}'s own keywords under env.kwargs (passed to gymnasium.make)")
            from hilrl.envs.adapter import ENV_ADAPTERS

            if self.adapter not in ENV_ADAPTERS:
                raise ValueError("env.adapter: " + ENV_ADAPTERS.unknown(self.adapter))
        else:
            given = self._changed(FOREIGN_ONLY_KEYS)
            if given:
                raise ValueError(f"env.{', env.'.join(given)}: for foreign envs (any gymnasium id); {self.id!r} is a "
                                 "hilrl task: set its keys (cameras, reward_type, use_rotation, ...) directly")
        if self.expert is not None and ":" not in self.expert:
            raise ValueError(f"env.expert {self.expert!r}: give a scripted policy as 'module:callable' (a factory "
                             "f(env, noise, seed) -> expert)")
        if (self.client_key is None) != (self.server_key is None):
            raise ValueError("set both env.client_key (our .key_secret) and env.server_key (the server's .key), "
                             "or neither")
        if self.client_key is not None and self.remote is None:
            raise ValueError("env.client_key/env.server_key authenticate to a robot server: set env.remote too")
        return self

    @field_validator("id")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if not is_hilrl_task(value):
            from hilrl.envs.adapter import check_env_id

            check_env_id(value)
            return value
        ids = registered_task_ids()
        if value not in ids:
            raise ValueError(f"unknown task {value!r}; allowed: {', '.join(ids)}, or any registered gymnasium id "
                             "(a foreign env)")
        return value

    def make_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``gymnasium.make(self.id, ...)``."""
        if self.foreign:
            kwargs = dict(self.kwargs)
            if self.max_episode_steps is not None:
                kwargs["max_episode_steps"] = self.max_episode_steps
            return kwargs
        kwargs = self.model_dump(include={"cameras", "image_size", "control_hz", "use_rotation",
                                          "terminate_on_success", "reward_type"})
        kwargs["cameras"] = tuple(self.cameras)
        if self.max_episode_steps is not None:
            kwargs["max_episode_steps"] = self.max_episode_steps
        return kwargs

    def file_kwargs(self) -> dict[str, Any]:
        """``make_kwargs`` as a demo file's ``env_args['env_kwargs']`` stores them (JSON: lists, no tuples)."""
        kwargs = self.make_kwargs()
        if "cameras" in kwargs:
            kwargs["cameras"] = list(kwargs["cameras"])
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

    ``source``: a simulated person driving the scripted expert (``person``: one who watches the task and
    steps in when it stalls or regresses, settings in ``kwargs``; or behind a gate, ``value``: RLIF's
    reference-critic gate; ``distance``: HG-DAgger's action-distance gate; ``random``), or a real
    person on a teleop ``device`` (HIL-SERL: the device takes over when it moves beyond ``dead_zone``,
    a held intervene button, or a gripper change; it needs ``pip install 'hilrl[teleop]'``).

    ``learn_from``: ``hil_serl`` also copies intervention steps to the demo buffer (HIL-SERL,
    rail-berkeley/hil-serl); ``rlif`` does not, and the run's reward defaults to RLIF's (Luo et al.
    2023, pd-perry/RLIF: the env reward is discarded and the transition just before each
    intervention gets -1; see the ``reward:`` section).
    """

    source: str = Field("none", description="none, or a registered intervention source: person, value, distance, "
                        "random, device, or a plugin's (hilrl.feedback.interventions.INTERVENTIONISTS)")
    learn_from: Literal["hil_serl", "rlif"] = "hil_serl"
    device: str | None = Field(None, description="source: device: the person's teleop device, a registered one: "
                               "keyboard, gamepad, spacemouse, or a plugin's (README, Teleoperation)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="settings of an intervention source that "
                                   "registered a config class (person: PersonSettings; a plugin's); validated by it")
    dead_zone: float = Field(0.05, ge=0.0, description="source: device: motion (action units) below which the policy "
                             "keeps control (HIL-SERL's near-zero threshold; 0.05 ignores a resting hand)")
    expert_noise: float = Field(0.0, ge=0.0, le=1.0, description="quality of the intervening expert")
    duration: int | None = Field(None, ge=1, description="expert steps per intervention; None = 4 (value) or 1")
    beta: float = Field(0.97, gt=0.0, description="value gate: Q(s,a_pi) < beta * Q(s,a_ref) (RLIF, Pen)")
    q_ref: str | None = Field(None, description="run folder whose SAC critic is Q_ref (value source); built there "
                              "before the run when missing (hilrl.runtime.train.ensure_reference_critic)")
    q_ref_steps: int = Field(8000, ge=1, description="env steps of the SAC run that builds a missing q_ref")
    threshold: float = Field(1.0, gt=0.0, description="distance gate: ||a_exp - a_pi||_1 >= threshold (HG-DAgger)")
    probability: float = Field(0.1, ge=0.0, le=1.0, description="random source: chance per step")
    p_intervene: float = Field(0.95, ge=0.0, le=1.0)

    @field_validator("source")
    @classmethod
    def _registered_source(cls, value: str) -> str:
        from hilrl.feedback.interventions import INTERVENTIONISTS

        if value != "none" and value not in INTERVENTIONISTS:
            raise ValueError(INTERVENTIONISTS.unknown(value, also=("none",)))
        return value

    @field_validator("device")
    @classmethod
    def _registered_device(cls, value: str | None) -> str | None:
        from hilrl.feedback.teleop import TELEOP_DEVICES

        if value is not None and value not in TELEOP_DEVICES.names(human=True):
            raise ValueError(TELEOP_DEVICES.unknown(value, human=True))
        return value

    @model_validator(mode="after")
    def _device_with_source(self) -> InterventionConfig:
        from hilrl.feedback.interventions import INTERVENTIONISTS
        from hilrl.feedback.teleop import human_device_names

        entry = INTERVENTIONISTS.entry(self.source) if self.source != "none" else None
        if entry is not None and entry["device"] and self.device is None:
            raise ValueError(f"intervention.source {self.source!r} needs intervention.device: one of "
                             f"{', '.join(human_device_names())}")
        if self.device is not None and not (entry is not None and entry["device"]):
            raise ValueError(f"intervention.device {self.device!r} is used with intervention.source: device (got "
                             f"source {self.source!r}); set source: device or remove device")
        if entry is not None and entry["reference_critic"] and not self.q_ref:
            raise ValueError(f"intervention.source {self.source!r} needs intervention.q_ref: a run folder of a SAC run "
                             "on the task's dense reward (built there on first use)")
        if self.kwargs and (entry is None or entry.config is None):
            raise ValueError(f"intervention.kwargs: source {self.source!r} takes no settings there (only a source "
                             "registered with a config class does); remove kwargs")
        if entry is not None and entry.config is not None:
            try:
                entry.config(**self.kwargs)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"intervention.kwargs of source {self.source!r}: {exc}") from None
        return self

    @property
    def settings(self) -> Any:
        """``kwargs`` as the source's registered config class (``None`` for a source without one)."""
        from hilrl.feedback.interventions import INTERVENTIONISTS

        entry = INTERVENTIONISTS.entry(self.source) if self.source != "none" else None
        return entry.config(**self.kwargs) if entry is not None and entry.config is not None else None

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
    is short for ``runtime: {mode: distributed}``. ``backend: ray`` runs that learner and its actors as Ray actors
    (:mod:`hilrl.runtime.distributed.ray_backend`) and implies ``mode: distributed``."""

    mode: Literal["local", "distributed"] = "local"
    backend: Literal["local", "ray"] = Field("local", description="where `hilrl train` starts the learner and its "
                                             "runtime.actors: local processes, or Ray actors (restarted when they die)")
    address: str | None = Field(None, description="backend ray: the cluster to join (`ray start --head` prints it, "
                                "e.g. 127.0.0.1:6379); None = RAY_ADDRESS, else a Ray started for this run")
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
        if isinstance(value, dict) and value.get("backend") == "ray" and "mode" not in value:
            return {**value, "mode": "distributed"}  # Ray runs the learner and its actors
        return {"mode": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _key_pairs(self) -> RuntimeConfig:
        if self.backend == "ray" and self.mode != "distributed":
            raise ValueError("runtime.backend: ray runs a learner fed by actors; remove runtime.mode: local (or set "
                             "mode: distributed)")
        for mine, theirs in (("learner_secret_key", "allow_keys"), ("actor_secret_key", "learner_public_key")):
            if (getattr(self, mine) is None) != (getattr(self, theirs) is None):
                raise ValueError(f"set both runtime.{mine} and runtime.{theirs}, or neither")
        return self


class ExperimentConfig(_Strict):
    plugins: list[str] = Field(default_factory=list, description="modules imported before the rest is validated, "
                               "so the parts they register can be named: dotted module names on PYTHONPATH or .py "
                               "files (relative to the current directory); see hilrl.plugins")
    env: EnvConfig
    demos: DemosConfig = Field(default_factory=DemosConfig)
    algo: Any = Field(default_factory=lambda: tagged_config("bc")())
    intervention: InterventionConfig = Field(default_factory=InterventionConfig)
    reward: RewardConfig | None = Field(None, description="door 2; None: rlif when intervention.learn_from is rlif, "
                                        "else env")
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, value: Any) -> Any:
        """Import ``plugins:`` first: the names the other sections use may be registered there."""
        if isinstance(value, dict):
            import_config_plugins(value.get("plugins"), "plugins")
        return value

    @field_validator("algo", mode="before")
    @classmethod
    def _algorithm_config(cls, value: Any) -> Any:
        """A mapping becomes the registered config of its ``name`` (:func:`validate_config` explains mistakes)."""
        if not isinstance(value, dict):
            return value
        try:
            return parse_algo(value, recorded=True)  # (validate_config parses a file's algo section first)
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
        training, intervention = self.train, self.intervention
        distributed = self.runtime.mode == "distributed"
        if distributed and not spec.distributed:
            names = ", ".join(algorithm_names(distributed=True))
            raise ValueError(f"runtime.mode: distributed trains algo.name {names}, not {name!r}; use runtime: local "
                             "for it")
        if training.keep_best and not (spec.keep_best and not distributed and training.eval_every):
            raise ValueError("train.keep_best works in the online SAC loop (algo.name: sac, runtime: local) with "
                             "train.eval_every > 0; remove it or change those settings")
        if spec.interventions == "required" and intervention.source == "none":
            raise ValueError(f"intervention.source: algo {name!r} learns from interventions; set it (e.g. distance)")
        if spec.interventions == "ignored" and intervention.source != "none":
            raise ValueError(f"intervention.source {intervention.source!r}: algo {name!r} trains offline on the demos and never "
                             "acts during training; remove the intervention section")
        reward = self.reward_config
        if reward.source != "env" and not spec.reward_sources:
            what = ("intervention.learn_from 'rlif'" if self.reward is None
                    else f"reward source {reward.source!r}")
            raise ValueError(f"{what} is not supported with algo {name!r} (it trains on the env reward, it cannot "
                             "relabel rewards); use learn_from: hil_serl, or algo: sac for RLIF and reward sources")
        if reward.uses("rlif") and intervention.source == "none":
            raise ValueError("reward: rlif learns from interventions (-1 before each), but intervention.source is "
                             "none; set intervention.source or another reward source")
        if spec.loop == "sb3" and training.random_steps:
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
        self._foreign_env_rules(name, spec)
        return self

    def _foreign_env_rules(self, name: str, spec: Any) -> None:
        """What a foreign env (any gymnasium id, through an env adapter) can do: the scripted expert parts need a
        scripted policy for it; the hilrl-only parts are refused with the reason."""
        env = self.env
        if not env.foreign:
            return
        from hilrl.feedback.experts import has_expert
        from hilrl.feedback.interventions import INTERVENTIONISTS

        source = self.intervention.source
        if source != "none" and INTERVENTIONISTS.entry(source)["device"] and env.action_map is None:
            raise ValueError(f"intervention.source {source!r}: a person's device drives {env.id!r} through "
                             "env.action_map; set which of its action dimensions are xyz, rotation and gripper (e.g. "
                             "action_map: {xyz: [0, 1, 2], gripper: 6, gripper_sign: -1})")
        if not has_expert(env.id, env.expert):
            fix = ("set env.expert to your scripted policy 'module:callable' (a factory f(env, noise, seed) -> expert "
                   "with reset() and expert(obs) -> action)")
            if not self.demos.path and self.demos.episodes:
                raise ValueError(f"demos: {self.demos.episodes} demos would be recorded by the scripted expert, and "
                                 f"{env.id!r} has none; {fix}, or give demos.path (e.g. recorded with `hilrl record "
                                 "--device keyboard`), or set demos.episodes: 0")
            if source != "none" and not INTERVENTIONISTS.entry(source)["device"]:
                raise ValueError(f"intervention.source {source!r}: a simulated person drives the scripted expert, and "
                                 f"{env.id!r} has none; {fix}, or intervene yourself (source: device)")
            if spec.loop == "dagger":
                raise ValueError(f"algo {name!r} asks the scripted expert for labels, and {env.id!r} has none; {fix}")


def import_config_plugins(names: Any, where: str) -> None:
    """Import the modules of a config's ``plugins:`` list (:func:`hilrl.plugins.import_plugins`); ``where`` names
    the list in errors (:class:`ConfigError`)."""
    from hilrl.plugins import PluginError, import_plugins

    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{where}: a list of module names or .py files, got {names!r}")
    try:
        import_plugins(names, where)
    except PluginError as exc:
        raise ConfigError(str(exc)) from exc


def parse_algo(raw: Any, recorded: bool = False) -> Any:
    """The ``algo:`` section as the registered config of its ``name`` (a strict pydantic dataclass).

    Keys are those of the config dataclass; a nested dataclass field is a section of its own
    (``algo.variants.bc_coef``), validated the same way. A key the config class lists in ``MOVED_KEYS``
    (old key -> new dotted key, e.g. SAC's flat keys before its sections) is refused naming its new
    spelling, unless ``recorded``: a config written by an earlier run (a checkpoint's experiment), whose
    keys the class's ``upgrade_keys`` moves.

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
    config = algorithm_spec(name).config
    moved = getattr(config, "MOVED_KEYS", {})
    if recorded and any(key in moved for key in raw):
        raw = config.upgrade_keys(raw)
    stale = [f"algo.{key} moved: write algo.{moved[key]}" for key in raw if key in moved]
    if stale:
        raise ValueError("; ".join(stale))
    return TypeAdapter(tagged_config(name)).validate_python({**raw, "name": name})


def _fields(cls: Any) -> dict[str, Any]:
    """``{name: annotation}`` of a model's, a pydantic dataclass's or a dataclass's fields ({} for anything else):
    the keys allowed in that section."""
    found = getattr(cls, "__pydantic_fields__", None)
    if found:
        return {name: field.annotation for name, field in found.items()}
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):  # an annotation that does not resolve here: the names are enough
            hints = {}
        return {field.name: hints.get(field.name) for field in dataclasses.fields(cls)}
    return {}


def _flatten_types(annotation: Any) -> list[Any]:
    """``Annotated[Union[A, B], ...]`` -> ``[..., A, B]``: every type nested in an annotation."""
    return [annotation, *(t for arg in get_args(annotation) for t in _flatten_types(arg))]


def _owner_at(loc: tuple[Any, ...], start: Any = None) -> Any:
    """The model (or dataclass) owning the field at ``loc`` (from ``start``, else the experiment), to list its
    allowed keys."""
    current: Any = ExperimentConfig if start is None else start
    for part in loc:
        known = _fields(current)
        if part not in known:
            continue
        with_fields = [m for m in _flatten_types(known[part]) if _fields(m)]
        current = (with_fields or [None])[0]
    return current


def _explain(error: dict[str, Any], prefix: tuple[str, ...] = (), owner: Any = None) -> str:
    """One readable sentence for a pydantic error; ``prefix`` and ``owner`` place errors of a section
    validated on its own (the ``algo:`` section, validated by its algorithm's config class)."""
    loc = (*prefix, *error["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in _UNKNOWN_KEY:
        parent = _owner_at(loc[:-1]) if owner is None else _owner_at(tuple(error["loc"][:-1]), start=owner)
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


@dataclass(frozen=True)
class Override:
    """One change to an experiment file made from outside it: a ``--set KEY=VALUE`` or a flag of a command.

    :param key: dotted path of the value, e.g. ``train.steps`` or ``algo.utd`` (a list item by its index,
        ``reward.parts.0.weight``); sections that are missing are made
    :param value: the new value, already parsed (:func:`parse_override` reads the text as YAML)
    :param origin: how the person wrote it, e.g. ``--set train.steps=-5`` or ``--steps -5``: an error this
        value causes starts with it instead of the file's name
    """

    key: str
    value: Any
    origin: str


# a section a YAML file may give as one string, and the key that string stands for (the ``mode="before"``
# validators of RewardConfig and RuntimeConfig): ``--set runtime.actors=2`` on ``runtime: distributed`` keeps it
_SHORTHAND_KEYS = {"reward": "source", "runtime": "mode"}
# numbers YAML 1.2 reads as floats but PyYAML (YAML 1.1) leaves as strings: an exponent without a dot or sign
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")
# pydantic's error types for a key the model does not have (a model's extra key, a dataclass's keyword)
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


def parse_override(text: str, flag: str = "--set") -> Override:
    """``KEY=VALUE`` as an :class:`Override`: a dotted key, and a value read as YAML, as the file's values are
    (``500`` an int, ``true`` a bool, ``[front, wrist]`` a list, ``null`` None, ``1e-3`` a float, else a string).

    :param text: what follows the flag, e.g. ``algo.utd=4``
    :param flag: the flag's name, for errors (``--set algo.utd=four: ...``)
    """
    origin = f"{flag} {text}"
    key, equals, value_text = text.partition("=")
    key = key.strip()
    if not equals or not key:
        raise ConfigError(f"{origin}: expected KEY=VALUE with a dotted key, e.g. {flag} train.steps=500")
    if not all(part and part.strip() == part for part in key.split(".")):
        raise ConfigError(f"{origin}: {key!r} is not a dotted key (names joined by '.', e.g. algo.utd)")
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: the value is not valid YAML ({getattr(exc, 'problem', None) or exc}); quote "
                          f"it to pass a string, e.g. {flag} '{key}=\"{value_text}\"'") from None
    if isinstance(value, str) and value == value_text.strip() and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # PyYAML follows YAML 1.1, where 1e-3 is a string; YAML 1.2 reads a float
    return Override(key, value, origin)


def apply_overrides(raw: dict[str, Any], overrides: Iterable[Override], source: str = "<config>") -> dict[str, Any]:
    """A copy of the mapping ``raw`` with each override's value put at its dotted key, in order (a later
    one wins); missing sections are made, and a section given as a shorthand string becomes a mapping."""
    raw = copy.deepcopy(raw)
    for override in overrides:
        parts = override.key.split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            here = ".".join(parts[:depth])
            slot: Any = part
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{override.origin}: {here!r} is a list of {len(node)} in {source}; index it "
                                      f"with 0..{len(node) - 1}, or set {here!r} as a whole")
                slot = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{override.origin}: {here!r} is {node!r} in {source}, not a section with keys; "
                                  f"set {here!r} as a whole")
            if depth == len(parts) - 1:
                node[slot] = override.value
                break
            child = node[slot] if isinstance(node, list) else node.get(slot)
            if child is None:
                child = node[slot] = {}
            elif depth == 0 and isinstance(child, str) and part in _SHORTHAND_KEYS:
                child = node[slot] = {_SHORTHAND_KEYS[part]: child}
            node = child
    return raw


def _as_overrides(overrides: Mapping[str, Any] | Iterable[Override] | None) -> list[Override]:
    """Overrides given as a mapping of dotted keys (the Python API) or as :class:`Override` (the command)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [Override(key, value, f"override {key}={value!r}") for key, value in overrides.items()]
    given = list(overrides)
    for earlier_index, earlier in enumerate(given):
        for later in given[earlier_index + 1:]:
            if later.key == earlier.key and later.origin != earlier.origin:
                raise ConfigError(f"{earlier.origin} and {later.origin} both set {later.key}; give it once")
    return given


def _within(path: str, section: str) -> bool:
    """Whether dotted ``path`` is ``section`` or lies inside it ("" is the whole config)."""
    return not section or path == section or path.startswith(section + ".")


def _origin(problem: tuple[tuple[str, ...], str, bool], overrides: list[Override], file_problems: set[str],
            source: str) -> str:
    """Where a problem of the overridden config came from: the override that put the value there; else the
    file, when the file alone has it; else the overrides that broke a rule of the section (or of the whole
    config) the problem is about, with the file named too when the file alone has other problems."""
    loc, text, unknown_key = problem
    path = ".".join(loc)
    setting = [o for o in overrides if _within(path, o.key)]
    if setting:  # the value (or a section above it) came from an override; the last one wins
        return setting[-1].origin
    inside = [o for o in overrides if _within(o.key, path)]
    if unknown_key and inside:  # an unknown key the override's path made, e.g. --set trian.steps=5
        return ", ".join(o.origin for o in inside)
    if text in file_problems:
        return source
    named = [o for o in inside if o.key in text] or inside or overrides
    culprits = ", ".join(o.origin for o in named)
    return f"{source} with {culprits}" if file_problems else culprits


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | Iterable[Override] | None = None
                ) -> ExperimentConfig:
    """Read and validate an experiment YAML, with values changed from outside it.

    :param path: the experiment YAML
    :param overrides: :class:`Override` (``--set`` and the command's flags, :func:`parse_override`), or a
        mapping of dotted keys to values. They are validated with the file, and every problem is named after
        where its value came from: ``--set train.steps=-5: field 'train.steps': ...`` names the flag, not the
        file; a rule the overrides broke names both (``FILE with --set ...``).
    """
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
    changes = _as_overrides(overrides)
    if not changes:
        return validate_config(raw, source=str(path))
    config, problems = _validated(apply_overrides(raw, changes, str(path)), str(path))
    if config is not None:
        return config
    try:  # which problems the file has on its own, to tell them from the overrides'
        file_problems = {text for _, text, _ in _validated(raw, str(path))[1]}
    except ConfigError as exc:
        file_problems = {str(exc)}
    lines: dict[str, list[str]] = {}
    for problem in problems:
        lines.setdefault(_origin(problem, changes, file_problems, str(path)), []).append(problem[1])
    raise ConfigError("; ".join(f"{origin}: {'; '.join(texts)}" for origin, texts in lines.items()))


def validate_config(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate an experiment given as a mapping; every problem is named in one :class:`ConfigError` line."""
    config, problems = _validated(raw, source)
    if config is None:
        raise ConfigError(f"{source}: " + "; ".join(text for _, text, _ in problems))
    return config


def _validated(raw: dict[str, Any], source: str) -> tuple[ExperimentConfig | None,
                                                          list[tuple[tuple[str, ...], str, bool]]]:
    """The config, or ``None`` and its problems as (location, sentence, is an unknown key); the location of a
    rule across sections is ``()``, that of an algorithm config's own range check ``("algo",)``."""
    raw = dict(raw)
    if "task" in raw and "env" not in raw:
        raise ConfigError(f"{source}: a correction-session config (it names a 'task' variant, no 'env'); run it "
                          "with `hilrl correct` (hilrl train takes an experiment with env/algo/train sections)")
    import_config_plugins(raw.get("plugins"), f"{source}: plugins")  # before algo: a plugin may register it
    algo = raw.get("algo", {"name": "bc"})
    try:
        raw["algo"] = parse_algo(algo) if isinstance(algo, dict) else algo
        return ExperimentConfig.model_validate(raw), []
    except ValidationError as exc:
        if raw["algo"] is algo and isinstance(algo, dict):  # the algo section itself failed
            owner = tagged_config(algo.get("name", "bc"))
            prefix, explained = ("algo",), [_explain(e, ("algo",), owner) for e in exc.errors()]
        else:
            prefix, explained = (), [_explain(e) for e in exc.errors()]
        return None, [((*prefix, *map(str, e["loc"])), text, e["type"] in _UNKNOWN_KEY)
                      for e, text in zip(exc.errors(), explained)]
    except (HilrlError, ValueError) as exc:  # an algorithm config's own range checks
        return None, [(("algo",), str(exc), False)]


def dump_config(config: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (every default filled in) next to a run's outputs."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def load_recorded_config(path: str | os.PathLike) -> ExperimentConfig:
    """The experiment a run folder recorded (its ``config.yaml``), as the run wrote it: keys an earlier hilrl
    spelt otherwise (SAC's flat keys) are moved to their sections, not refused as in a user's file."""
    try:
        return ExperimentConfig.model_validate(yaml.safe_load(Path(path).read_text()))
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_explain(e) for e in exc.errors())) from None

def load_run_env(run_dir: str | os.PathLike) -> EnvConfig | None:
    """The env section of a run folder's ``config.yaml``, to render its segments with (the labelling page);
    ``None`` when the folder has no config or the run drove a remote arm (no MuJoCo states to render)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    env = EnvConfig.model_validate(yaml.safe_load(path.read_text())["env"])
    return None if env.remote else env
