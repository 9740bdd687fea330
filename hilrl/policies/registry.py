"""The algorithm protocol, and the registry from ``algo.name`` to an algorithm and its config class.

robomimic's pattern (``register_algo_factory_func`` plus one ``Algo`` interface) with SB3's
constructor keywords: an algorithm is a class ``cls(observation_space, action_space, config, seed=0)``
whose settings are a dataclass, registered under a name with a decorator::

    @dataclass
    class ToyConfig:
        lr: float = 1e-3

    @register_algorithm("toy", ToyConfig)
    class Toy:
        def __init__(self, observation_space, action_space, config, seed=0): ...
        def act(self, obs, deterministic=False): ...
        def update(self, replay): ...
        ...

After that ``algo: {name: toy, lr: 0.01}`` validates in any experiment YAML (unknown keys are refused
with the allowed ones listed) and ``hilrl train`` runs it: one file adds an algorithm. The config
union of :mod:`hilrl.config` and the dispatch of :func:`make_algorithm` are both read from here.

The registry is a :class:`hilrl.plugins.Registry` (:data:`ALGORITHMS`), the one mechanism of every door:
an algorithm of an installed plugin (entry-point group ``hilrl.plugins``) or of a file named in a config's
``plugins:`` list registers the same way. Built-in algorithms are registered with their config (in
:mod:`hilrl.policies.configs`, which the package :mod:`hilrl.policies` imports, so the registry is complete
whenever this module is importable) and their implementation named by import path
(``"hilrl.policies.sac:SAC"``): validating a config never imports torch; the class is imported when
:func:`make_algorithm` first builds one.

This module imports neither torch nor any algorithm (nor the configs that register them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from hilrl.errors import HilrlError
from hilrl.plugins import Registry

LOOPS = ("online", "offline", "dagger", "sb3")


class Algorithm(Protocol):
    """What every loop of :mod:`hilrl.runtime` needs from an algorithm (documentation: nothing checks it
    at run time; a loop calls what its strategy needs).

    ``update`` is called by the loop the registration names (``loop``): the online loop calls it
    once per env step after ``train.learning_starts`` (each call is one RLPD update of SAC: ``utd``
    critic steps, one actor step), the offline loop ``train.steps`` times on the demos, DAgger once
    per round. ``replay`` is a :class:`hilrl.data.buffers.Replay` (``online`` and ``demo`` buffers,
    whose sampled ``rewards`` come from the run's reward source). SB3 algorithms (``loop="sb3"``)
    are updated by SB3's own ``learn()`` and need no ``update``.
    """

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray: ...

    def update(self, replay: Any) -> Mapping[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def policy_weights(self) -> dict[str, np.ndarray]:
        """Everything :meth:`act` needs, as flat numpy arrays (sent to actor processes)."""
        ...

    def load_policy_weights(self, weights: Mapping[str, np.ndarray]) -> None: ...


@dataclass(frozen=True)
class AlgorithmSpec:
    """One registered algorithm.

    Attributes:
        name: its ``algo.name``.
        config: the dataclass of its settings (the keys allowed under ``algo:``).
        implementation: the class, or ``"module:Class"`` imported on first use.
        loop: which loop of :mod:`hilrl.runtime` trains it: ``online`` (env steps, replay, ``update``
            every step), ``offline`` (``update`` on the demos only), ``dagger`` (rounds of expert
            labels) or ``sb3`` (SB3's own ``learn``).
        interventions: ``optional`` (a person may take over), ``required`` (it learns only from
            them, HG-DAgger) or ``ignored`` (offline learners never act during training).
        reward_sources: it trains on the rewards of a reward source (door 2): the ``reward:`` section
            and ``intervention.learn_from: rlif`` are allowed.
        distributed: it runs as a learner fed by actor processes (``runtime: distributed``).
        keep_best: it supports ``train.keep_best`` (save the best evaluated checkpoint).
        fixed: settings the name implies (``hg_dagger`` is DAgger with ``label: interventions``).
    """

    name: str
    config: type
    implementation: type | str
    loop: str = "online"
    interventions: Literal["optional", "required", "ignored"] = "optional"
    reward_sources: bool = True
    distributed: bool = False
    keep_best: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> type:
        """The algorithm class (imported now if registered by path)."""
        if not isinstance(self.implementation, str):
            return self.implementation
        return ALGORITHMS.get(self.name)


ALGORITHMS = Registry("algorithm", load_hint="install what it needs (see the README's algorithm table)")
_SPEC_FIELDS = ("loop", "interventions", "reward_sources", "distributed", "keep_best", "fixed")
_TAGGED: dict[str, type] = {}
ALGORITHMS.on_change(_TAGGED.clear)  # a new name may join an existing config's class


def register_algorithm(name: str, config: type, *, implementation: str | None = None, loop: str = "online",
                       interventions: Literal["optional", "required", "ignored"] = "optional",
                       reward_sources: bool = True, distributed: bool = False, keep_best: bool = False,
                       fixed: Mapping[str, Any] | None = None) -> Callable[[type], type]:
    """Register an algorithm under ``name`` with its config dataclass; use as a class decorator.

    ``implementation="module:Class"`` registers at once without importing the class (the built-ins
    do this, so configs validate without torch); the returned decorator is then not needed. The other
    keywords are the fields of :class:`AlgorithmSpec`. Registering a name again replaces it.
    """
    if loop not in LOOPS:
        raise HilrlError(f"register_algorithm({name!r}): loop must be one of {', '.join(LOOPS)}, got {loop!r}")
    if interventions not in ("optional", "required", "ignored"):
        raise HilrlError(f"register_algorithm({name!r}): interventions must be optional, required or ignored, "
                         f"got {interventions!r}")
    if not dataclasses.is_dataclass(config):
        raise HilrlError(f"register_algorithm({name!r}): config must be a dataclass, got {config!r}")
    meta = dict(loop=loop, interventions=interventions, reward_sources=reward_sources, distributed=distributed,
                keep_best=keep_best, fixed=dict(fixed or {}))
    if implementation is not None:
        ALGORITHMS.register(name, implementation, config, **meta)
    return ALGORITHMS.register(name, None, config, **meta)


def algorithm_names(distributed: bool | None = None) -> list[str]:
    """Registered names (sorted); ``distributed=True`` only those that run as a learner fed by actors."""
    return sorted(ALGORITHMS.names() if distributed is None else ALGORITHMS.names(distributed=distributed))


def algorithm_spec(name: str) -> AlgorithmSpec:
    """The registration of ``name``; an unknown name is a :class:`HilrlError` listing the registered ones."""
    entry = ALGORITHMS.entry(name)
    return AlgorithmSpec(entry.name, entry.config, entry.target, **{key: entry[key] for key in _SPEC_FIELDS})


def tagged_config(name: str) -> type:
    """The strict pydantic dataclass validating ``algo:`` for ``name``: the config's fields plus ``name``.

    Unknown keys are refused; the fields the name fixes (``spec.fixed``) default to their value and
    accept only it.
    """
    if name in _TAGGED:
        return _TAGGED[name]
    from pydantic import ConfigDict
    from pydantic.dataclasses import dataclass as pydantic_dataclass

    spec = algorithm_spec(name)
    # names that share a config and its fixed settings share one class (sb3.sac, sb3.td3, ... take any of them)
    siblings = tuple(sorted(entry.name for entry in ALGORITHMS.entries()
                            if entry.config is spec.config and entry["fixed"] == spec.fixed))
    fields: list[tuple[str, Any, Any]] = [("name", Literal[siblings], dataclasses.field(default=name))]
    for key, value in spec.fixed.items():
        fields.append((key, Literal[value], dataclasses.field(default=value)))
    tagged = dataclasses.make_dataclass(f"{spec.config.__name__}_{name.replace('.', '_')}", fields,
                                        bases=(spec.config,))
    tagged.__doc__ = f"``algo:`` for {' / '.join(siblings)} (:class:`{spec.config.__module__}.{spec.config.__qualname__}`)."
    tagged.__module__ = spec.config.__module__
    tagged = pydantic_dataclass(config=ConfigDict(extra="forbid"))(tagged)
    _TAGGED.update(dict.fromkeys(siblings, tagged))
    return tagged


def make_algorithm(config: Any, observation_space: Any, action_space: Any, seed: int = 0) -> Any:
    """Build the algorithm named by ``config.name`` for these spaces."""
    return ALGORITHMS.get(config.name)(observation_space, action_space, config, seed=seed)
