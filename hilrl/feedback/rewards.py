"""Reward sources: door 2 of the architecture (``docs/ARCHITECTURE.md``). What a learner trains on.

A source turns stored transitions into rewards::

    class RewardSource(Protocol):
        version: int                                   # bumps whenever the reward it computes changes
        def __call__(self, batch: RewardBatch) -> np.ndarray: ...   # float32 [N], one reward per row

The replay buffers store what happened (the env's reward is kept as it came, with the task's
named reward terms, the intervention flags, episode ids and step indices,
:class:`~hilrl.data.buffers.RewardBatch`); the run's source is set on them
(:meth:`hilrl.data.buffers.Replay.set_reward_source`) and the batches a learner samples carry its
rewards. A source whose reward changes while training (a preference model refitted, PEBBLE-style)
bumps ``version``, and every stored row is recomputed in bulk before the next batch. Versions only
grow. Learners never know which source they were given.

Sources here: the env's own reward, RLIF's relabelling, one of the task's named reward terms, and
weighted sums; the ``reward:`` section of a config picks one by name (:func:`make_reward_source`), and
``reward: {source: "my_module:make_source", kwargs: {...}}`` plugs in any other callable.

Every name lives in :data:`REWARD_SOURCES`, a :class:`hilrl.plugins.Registry` (the same mechanism as
algorithms, interventionists and teleop devices): a source registers with a decorator next to its
class (:func:`register_reward_source`; a plugin package or a file in the config's ``plugins:`` list does
the same), and is built as ``factory(reward_config, context)`` with the run's :class:`SourceContext`
(a class registers its ``from_config`` classmethod as that factory). Named sources that live elsewhere
in hilrl (learned reward models, LLM-written reward code) are registered here by import path,
imported only when a run asks for them. A source that learns while the robot trains
(a preference model, PEBBLE-style) also implements :class:`TrainableRewardSource`: the online loop
calls its ``after_step`` once per stored env step and logs what it returns under ``reward/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hilrl.data.buffers import RewardBatch
from hilrl.errors import HilrlError
from hilrl.plugins import Registry, import_object

__all__ = ["BUILTIN_SOURCES", "REWARD_SOURCES", "EnvReward", "RLIFReward", "RewardBatch", "RewardSource",
           "SourceContext", "TermReward", "TrainableRewardSource", "WeightedSum", "make_reward_source",
           "register_reward_source", "reward_source_names", "wrap_training_env"]


@runtime_checkable
class RewardSource(Protocol):
    """See the module docstring."""

    version: int

    def __call__(self, batch: RewardBatch) -> np.ndarray: ...


@runtime_checkable
class TrainableRewardSource(RewardSource, Protocol):
    """A source that learns while the robot trains (a preference model refitted on new labels).

    ``after_step(transition, replay, env_steps)`` is called by the online loop after each env step
    is stored (``transition``: :meth:`hilrl.runtime.steps.StepSource.step`'s dict, with ``sim_state``,
    the MuJoCo state before the step, when the source sets ``wants_sim_state = True`` and the env is
    simulated); it decides its own schedule (queries, refits, ``version`` bumps) and returns scalars
    to log (or ``None``). ``close()`` is called when the run ends.
    """

    def after_step(self, transition: Mapping[str, Any], replay: Any, env_steps: int) -> Mapping[str, float] | None: ...

    def close(self) -> None: ...


@dataclass
class SourceContext:
    """What a named source's factory may need of the run: its folder (a source keeps its own files
    under ``run_dir``, e.g. a preference store), the env's config, the run's seed, and the training
    env (e.g. to render segments of it); fields are ``None`` where there is no run (a source built alone)."""

    run_dir: Path | None = None
    env_config: Any = None
    seed: int = 0
    env: Any = None


BUILTIN_SOURCES = ("env", "rlif", "term", "sum")
# name -> factory(config: RewardConfig, context: SourceContext) -> RewardSource (a class: its from_config)
REWARD_SOURCES = Registry("reward source")


def register_reward_source(name: str, factory: str | Callable[..., Any] | None = None) -> Any:
    """Make ``reward: {source: NAME}`` build ``factory``: called as ``factory(reward_config, context)``.

    ``factory`` is a callable, a class with a ``from_config(reward_config, context)`` classmethod, or
    ``"module:function"`` imported on first use. Without it, a decorator::

        @register_reward_source("height")
        class HeightReward:
            version = 0
            @classmethod
            def from_config(cls, config, context): return cls()
            def __call__(self, batch): return batch.next_obs["ee_pos"][:, 2]
    """
    if name in BUILTIN_SOURCES or ":" in name:
        raise HilrlError(f"reward source name {name!r} is taken or has a ':'; pick another name")
    return REWARD_SOURCES.register(name, factory)


def reward_source_names() -> tuple[str, ...]:
    """Every name ``reward.source`` accepts besides ``module:factory`` paths (in the order registered)."""
    return tuple(REWARD_SOURCES.names())


@REWARD_SOURCES.register("env")
class EnvReward:
    """The env's own reward, as stored."""

    version = 0

    @classmethod
    def from_config(cls, config: Any, context: SourceContext) -> EnvReward:
        return cls()

    def __call__(self, batch: RewardBatch) -> np.ndarray:
        return batch.env_rewards.astype(np.float32)

    def __repr__(self) -> str:
        return "EnvReward()"


@REWARD_SOURCES.register("rlif")
class RLIFReward:
    """RLIF's reward (Luo et al. 2023, "RLIF: Interactive Imitation Learning as Reinforcement Learning";
    pd-perry/RLIF): the env's reward is discarded; the transition immediately before an intervention
    begins gets -1, every other transition 0.

    From the stored flags: a row is that transition when the person was not in control at its step
    and was at the episode's next step (``next_intervened``, set when that step is stored). So -1
    always sits on the agent's own action; a segment starting at an episode's first step has no
    transition before it and labels nothing; demos (never intervened) get 0. The paper's semantics,
    not its code's quirks (one-step insertion lag, only the last expert step stored, terminal
    transition dropped).
    """

    version = 0

    @classmethod
    def from_config(cls, config: Any, context: SourceContext) -> RLIFReward:
        return cls()

    def __call__(self, batch: RewardBatch) -> np.ndarray:
        return np.where(batch.next_intervened & ~batch.intervened, -1.0, 0.0).astype(np.float32)

    def __repr__(self) -> str:
        return "RLIFReward()"


@REWARD_SOURCES.register("term")
class TermReward:
    """One of the task's named reward terms (``info["reward_terms"][name]``, stored with every step)."""

    version = 0

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_config(cls, config: Any, context: SourceContext) -> TermReward:
        return cls(config.term)

    def __call__(self, batch: RewardBatch) -> np.ndarray:
        if self.name not in batch.reward_terms:
            have = sorted(batch.reward_terms) or "none (demos recorded without reward terms, or a task without them)"
            raise HilrlError(f"reward term {self.name!r} is not stored with these transitions; they have {have}. "
                             "Pick one of those in reward.term (re-record demos made with an older hilrl)")
        values = batch.reward_terms[self.name].astype(np.float32)
        if np.isnan(values).any():
            raise HilrlError(f"reward term {self.name!r} is unknown for some stored steps (steps of an env without "
                             "reward terms, e.g. a real arm, stored beside demos that have them); use a reward "
                             "source that does not need the term for such runs")
        return values

    def __repr__(self) -> str:
        return f"TermReward({self.name!r})"


@REWARD_SOURCES.register("sum")
class WeightedSum:
    """``sum_i weight_i * source_i(batch)``; its version moves whenever a part's does."""

    def __init__(self, parts: Sequence[tuple[float, RewardSource]]) -> None:
        if not parts:
            raise HilrlError("a reward sum needs at least one part")
        self.parts = [(float(weight), source) for weight, source in parts]

    @classmethod
    def from_config(cls, config: Any, context: SourceContext) -> WeightedSum:
        return cls([(part.weight, _make_one(part, context)) for part in config.parts])

    @property
    def version(self) -> int:
        return sum(int(source.version) for _, source in self.parts)  # parts' versions only grow

    def __call__(self, batch: RewardBatch) -> np.ndarray:
        total = np.zeros(len(batch), np.float32)
        for weight, source in self.parts:
            total += weight * np.asarray(source(batch), np.float32)
        return total

    def __repr__(self) -> str:
        return "WeightedSum(" + ", ".join(f"{w:g} * {s!r}" for w, s in self.parts) + ")"


def make_reward_source(config: Any, context: SourceContext | None = None) -> RewardSource:
    """The source a :class:`hilrl.config.RewardConfig` describes (a weight outside a sum scales the source);
    ``context`` is handed to registered sources' factories."""
    source = _make_one(config, context or SourceContext())
    return source if config.weight == 1.0 or config.source == "sum" else WeightedSum([(config.weight, source)])


def trainable_parts(source: RewardSource) -> list[TrainableRewardSource]:
    """The sources inside ``source`` (itself, or the parts of a sum) that learn while the robot trains."""
    if isinstance(source, WeightedSum):
        return [t for _, part in source.parts for t in trainable_parts(part)]
    return [source] if callable(getattr(source, "after_step", None)) else []


def wrap_training_env(source: RewardSource, env: Any) -> Any:
    """``env`` wrapped by each source inside ``source`` that acts on the episodes it judges (a ``wrap_env(env)``
    method, e.g. the success classifier ending an episode at a confident success, as HIL-SERL's reward wrapper)."""
    if isinstance(source, WeightedSum):
        for _, part in source.parts:
            env = wrap_training_env(part, env)
        return env
    wrap = getattr(source, "wrap_env", None)
    return wrap(env) if callable(wrap) else env


def _make_one(config: Any, context: SourceContext) -> RewardSource:
    if ":" in config.source:
        source = import_object(config.source, "reward source", "give an importable 'module:factory' (on "
                               "PYTHONPATH), or install the extra it needs")(**config.kwargs)
    else:
        factory = REWARD_SOURCES.get(config.source)
        source = getattr(factory, "from_config", factory)(config, context)
    if not isinstance(source, RewardSource):
        raise HilrlError(f"reward source {config.source!r} returned {source!r}, which is not a reward source: it "
                         "must be callable on a RewardBatch and have an int 'version'")
    return source


# learned reward models (hilrl/feedback/preferences), imported only when a run asks for them
register_reward_source("preferences", "hilrl.feedback.preferences.source:make_preference_source")
register_reward_source("heron", "hilrl.feedback.preferences.heron:make_heron_source")
register_reward_source("rapl", "hilrl.feedback.preferences.rapl:make_rapl_source")
register_reward_source("success_classifier", "hilrl.feedback.preferences.classifier:make_classifier_source")
register_reward_source("code", "hilrl.llm.reward_code:make_code_source")
