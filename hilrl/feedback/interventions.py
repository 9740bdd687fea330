"""Interventions: door 1 of the architecture (``docs/ARCHITECTURE.md``). A source may override the policy's
action; every step is marked.

:class:`InterventionWrapper` asks an :class:`InterventionSource` at each step
whether it takes over. ``info`` then carries ``intervened``, ``policy_action``
(what the learner proposed) and ``executed_action`` (what the arm did). The
learner must store the executed action (SB3 issue #1813 is the pitfall).

Simulated interventionists (RLIF, Luo et al. 2023, pd-perry/RLIF @ d177b9b):

* :class:`ValueInterventionist` (RLIF): while the expert is not in control,
  intervene with probability 0.95 when ``Q_ref(s, a_pi) < beta * Q_ref(s, a_ref)``,
  else with 0.05; once triggered the expert acts for 4 steps.
* :class:`DistanceInterventionist` (HG-DAgger): intervene when
  ``||a_expert - a_pi||_1 >= threshold`` (with probability 0.95).
* :class:`RandomInterventionist`: intervene with a fixed probability for a fixed duration.

A person on a teleop device is :class:`~hilrl.feedback.teleop.DeviceInterventionist` (HIL-SERL).

Which one a run uses is ``intervention.source``, a name of :data:`INTERVENTIONISTS` (a
:class:`hilrl.plugins.Registry`, the one mechanism of every door). Each registers with a decorator next
to its class and builds itself with ``from_config(intervention_config, context)`` from the
:class:`InterventionContext` the runtime supplies (the env, seeds, an open device, the reference critic),
so this package never imports the runtime. A new interventionist is one file::

    @register_interventionist("every_tenth", config_cls=EveryTenthSettings)  # validates intervention.kwargs
    class EveryTenth:
        @classmethod
        def from_config(cls, config, context): return cls(context.expert(config.expert_noise))
        def reset(self): ...
        def __call__(self, obs, policy_action): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from hilrl.errors import HilrlError
from hilrl.plugins import Registry

Obs = dict[str, np.ndarray]
ExpertFn = Callable[[Obs], np.ndarray]
QFn = Callable[[Obs, np.ndarray], float]

# intervention.source -> a class with from_config(config, context) (or a factory called so). ``reference_critic``:
# it reads RLIF's reference critic, which the runtime trains before the run (intervention.q_ref) and hands over
# in the context. ``device``: it reads the person's teleop device named by intervention.device.
INTERVENTIONISTS = Registry("intervention source", defaults={"reference_critic": False, "device": False})
register_interventionist = INTERVENTIONISTS.register


@dataclass
class InterventionContext:
    """What building an interventionist may need of the run, supplied by the runtime.

    Attributes:
        env: the training env (its expert, its observation space).
        expert_seed: seed of the scripted expert a simulated person drives.
        gate_seed: seed of the gate's decisions.
        device: an open :class:`~hilrl.feedback.teleop.TeleopDevice` the caller owns (``None``: open the
            configured one).
        reference_q: loads ``Q_ref(obs, action) -> float``, RLIF's reference critic (``intervention.q_ref``,
            trained before the run by :func:`hilrl.runtime.train.train`); ``None`` when the config names none.
    """

    env: gym.Env
    expert_seed: int | None = None
    gate_seed: int | None = None
    device: Any = None
    reference_q: Callable[[], QFn] | None = None

    def expert(self, noise: float = 0.0) -> ExpertFn:
        """The env's scripted expert at ``noise``, seeded with :attr:`expert_seed`."""
        from hilrl.feedback.experts import make_expert

        return make_expert(self.env, noise=noise, seed=self.expert_seed)


def make_interventionist(config: Any, context: InterventionContext) -> InterventionSource:
    """The interventionist ``config.source`` names (a :class:`hilrl.config.InterventionConfig`), built with
    ``context``; ``source: none`` builds nothing (the loop adds no wrapper)."""
    if config.source == "none":
        raise HilrlError("intervention.source 'none': nothing intervenes; the loop builds no wrapper for it")
    factory = INTERVENTIONISTS.get(config.source)
    source = getattr(factory, "from_config", factory)(config, context)
    if not (callable(source) and callable(getattr(source, "reset", None))):
        raise HilrlError(f"intervention source {config.source!r} built {source!r}, which is no interventionist: it "
                         "needs reset() and __call__(obs, policy_action) -> action or None")
    return source


class InterventionSource(Protocol):
    """Decides, given the observation and the policy's proposed action, whether to take over."""

    def reset(self) -> None: ...

    def __call__(self, obs: Obs, policy_action: np.ndarray) -> np.ndarray | None:
        """The action to execute instead of ``policy_action``, or ``None`` to let the policy act."""
        ...


class _HoldingInterventionist:
    """Shared mechanics: once triggered, the expert keeps control for ``duration`` steps."""

    def __init__(self, expert: ExpertFn, duration: int, seed: int | None):
        if duration < 1:
            raise ValueError(f"duration must be >= 1 step, got {duration}")
        self.expert = expert
        self.duration = duration
        self.rng = np.random.default_rng(seed)
        self._remaining = 0

    def reset(self) -> None:
        self._remaining = 0
        reset = getattr(self.expert, "reset", None)
        if reset is not None:
            reset()

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        raise NotImplementedError

    def __call__(self, obs: Obs, policy_action: np.ndarray) -> np.ndarray | None:
        # the expert is queried every step so a stateful scripted expert keeps track of the episode
        expert_action = np.asarray(self.expert(obs), dtype=np.float32)
        if self._remaining == 0 and self._should_start(obs, policy_action, expert_action):
            self._remaining = self.duration
        if self._remaining > 0:
            self._remaining -= 1
            return expert_action
        return None


@register_interventionist("value", reference_critic=True)
class ValueInterventionist(_HoldingInterventionist):
    """RLIF's value-based gate with a reference critic ``q_ref(obs, action) -> float``.

    Defaults follow RLIF (pd-perry/RLIF @ d177b9b): beta 0.97 (its Pen value),
    p 0.95 / 0.05, 4 expert steps per intervention.
    """

    def __init__(self, expert: ExpertFn, q_ref: QFn, beta: float = 0.97, duration: int = 4,
                 p_low_value: float = 0.95, p_otherwise: float = 0.05, seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.q_ref = q_ref
        self.beta = beta
        self.p_low_value = p_low_value
        self.p_otherwise = p_otherwise

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> ValueInterventionist:
        if context.reference_q is None:
            raise HilrlError("intervention.source 'value' reads a reference critic, and none was given: set "
                             "intervention.q_ref (hilrl train builds it there before the run)")
        return cls(context.expert(config.expert_noise), context.reference_q(), beta=config.beta,
                   duration=config.duration or 4, p_low_value=config.p_intervene, seed=context.gate_seed)

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        q_policy = self.q_ref(obs, policy_action)
        q_expert = self.q_ref(obs, expert_action)
        # beta * Q assumes positive values; for negative Q the same margin means (2 - beta) * Q
        threshold = self.beta * q_expert if q_expert >= 0 else (2.0 - self.beta) * q_expert
        p = self.p_low_value if q_policy < threshold else self.p_otherwise
        return bool(self.rng.random() < p)


@register_interventionist("distance")
class DistanceInterventionist(_HoldingInterventionist):
    """HG-DAgger's gate: intervene (p=0.95) when ``||a_expert - a_pi||_1 >= threshold``."""

    def __init__(self, expert: ExpertFn, threshold: float, duration: int = 1, p_intervene: float = 0.95,
                 seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.threshold = threshold
        self.p_intervene = p_intervene

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> DistanceInterventionist:
        return cls(context.expert(config.expert_noise), config.threshold, duration=config.duration or 1,
                   p_intervene=config.p_intervene, seed=context.gate_seed)

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        far = float(np.abs(expert_action - policy_action).sum()) >= self.threshold
        return far and bool(self.rng.random() < self.p_intervene)


@register_interventionist("random")
class RandomInterventionist(_HoldingInterventionist):
    """Intervene with probability ``probability`` per step (RLIF's random baseline: 0.3/0.5/0.7/0.85)."""

    def __init__(self, expert: ExpertFn, probability: float, duration: int = 1, seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.probability = probability

    @classmethod
    def from_config(cls, config: Any, context: InterventionContext) -> RandomInterventionist:
        return cls(context.expert(config.expert_noise), config.probability, duration=config.duration or 1,
                   seed=context.gate_seed)

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        return bool(self.rng.random() < self.probability)


# a person on a teleop device (HIL-SERL); its class and from_config live with the devices
register_interventionist("device", "hilrl.feedback.teleop.takeover:DeviceInterventionist", device=True)


class InterventionWrapper(gym.Wrapper):
    """Lets an intervention source override actions and marks every step in ``info``.

    ``info`` keys: ``intervened`` (bool), ``intervention_start`` (bool, first
    step of a segment), ``policy_action``, ``executed_action``. A source with a ``verdict``
    (a person's success/failure button, :class:`~hilrl.feedback.teleop.DeviceInterventionist`)
    ends the episode as ``hilrl record`` does: success with ``terminated`` (and ``is_success``),
    failure with ``truncated`` (a person stopping is no MDP terminal, so it bootstraps); the
    reward stays the env's. ``info["verdict"]`` then says which.
    """

    def __init__(self, env: gym.Env, source: InterventionSource):
        super().__init__(env)
        self.source = source
        self._obs: Obs | None = None
        self._was_intervening = False
        self.interventions = 0
        self.intervened_steps = 0

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self.source.reset()
        self._obs = obs
        self._was_intervening = False
        return obs, info

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()  # a device the source opened
        super().close()

    def step(self, action: np.ndarray):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        policy_action = np.asarray(action, dtype=np.float32)
        override = self.source(self._obs, policy_action)
        intervened = override is not None
        executed = np.clip(override, -1.0, 1.0).astype(np.float32) if intervened else policy_action
        obs, reward, terminated, truncated, info = self.env.step(executed)
        start = intervened and not self._was_intervening
        self.interventions += int(start)
        self.intervened_steps += int(intervened)
        info = {**info, "intervened": intervened, "intervention_start": start,
                "policy_action": policy_action, "executed_action": executed}
        verdict = getattr(self.source, "verdict", None)
        if verdict is not None:
            terminated, truncated = terminated or verdict == "success", truncated or verdict == "failure"
            info["verdict"] = verdict
            info["is_success"] = verdict == "success"
        self._was_intervening = intervened
        self._obs = obs
        return obs, reward, terminated, truncated, info

