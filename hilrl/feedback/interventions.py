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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

Obs = dict[str, np.ndarray]
ExpertFn = Callable[[Obs], np.ndarray]
QFn = Callable[[Obs, np.ndarray], float]


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


class RandomInterventionist(_HoldingInterventionist):
    """Intervene with probability ``probability`` per step (RLIF's random baseline: 0.3/0.5/0.7/0.85)."""

    def __init__(self, expert: ExpertFn, probability: float, duration: int = 1, seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.probability = probability

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        return bool(self.rng.random() < self.probability)


class DistanceInterventionist(_HoldingInterventionist):
    """HG-DAgger's gate: intervene (p=0.95) when ``||a_expert - a_pi||_1 >= threshold``."""

    def __init__(self, expert: ExpertFn, threshold: float, duration: int = 1, p_intervene: float = 0.95,
                 seed: int | None = None):
        super().__init__(expert, duration, seed)
        self.threshold = threshold
        self.p_intervene = p_intervene

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        far = float(np.abs(expert_action - policy_action).sum()) >= self.threshold
        return far and bool(self.rng.random() < self.p_intervene)


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

    def _should_start(self, obs: Obs, policy_action: np.ndarray, expert_action: np.ndarray) -> bool:
        q_policy = self.q_ref(obs, policy_action)
        q_expert = self.q_ref(obs, expert_action)
        # beta * Q assumes positive values; for negative Q the same margin means (2 - beta) * Q
        threshold = self.beta * q_expert if q_expert >= 0 else (2.0 - self.beta) * q_expert
        p = self.p_low_value if q_policy < threshold else self.p_otherwise
        return bool(self.rng.random() < p)


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

