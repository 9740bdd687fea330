"""The Episode type every recorder, reader and learner shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Episode:
    """One episode as arrays over time steps ``t = 0 .. T-1``.

    ``obs[k][t]`` is the observation the action ``actions[t]`` was taken in and
    ``next_obs[k][t]`` the one it led to; ``states[t]`` is the full simulator
    state at ``obs[t]`` (``None`` for sources without one, such as a real arm).
    ``terminated`` and ``truncated`` are kept apart because bootstrapping
    depends on the difference; robomimic's ``dones`` is their union.
    ``extras`` holds further per-step arrays (``intervened``, ``policy_actions``...),
    ``reward_terms`` the task's named reward terms per step (``info["reward_terms"]``; empty for
    sources without them) and ``attrs`` per-episode facts (``seed``, ``success``...).
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    states: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    reward_terms: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def dones(self) -> np.ndarray:
        return np.logical_or(self.terminated, self.truncated)

    @property
    def success(self) -> bool:
        """The recorded success flag, or else whether the episode ended by termination."""
        if "success" in self.attrs:
            return bool(self.attrs["success"])
        return bool(len(self) and self.terminated[-1])

    def first_success(self) -> int | None:
        """The first step whose ``info["is_success"]`` was true (the ``is_success`` extra, or else a
        ``success`` reward term), or ``None`` if none was or the episode does not say."""
        flags = self.extras.get("is_success", self.reward_terms.get("success"))
        if flags is None:
            return None
        hits = np.flatnonzero(np.asarray(flags) > 0.5)
        return int(hits[0]) if len(hits) else None

    def cut_after_success(self, keep: int) -> Episode:
        """This episode up to ``keep`` steps after its first success, its last step marked ``truncated``
        (unless it terminated): the rest of a demo that goes on after success only holds the object at
        the goal. Unchanged when it never succeeded, does not say, or ends sooner."""
        first = self.first_success()
        if first is None or first + keep + 1 >= len(self):
            return self
        end = first + keep + 1
        truncated = self.truncated[:end].copy()
        truncated[-1] = not self.terminated[end - 1]
        return Episode(obs={k: v[:end] for k, v in self.obs.items()},
                       next_obs={k: v[:end] for k, v in self.next_obs.items()}, actions=self.actions[:end],
                       rewards=self.rewards[:end], terminated=self.terminated[:end], truncated=truncated,
                       states=None if self.states is None else self.states[:end],
                       extras={k: v[:end] for k, v in self.extras.items()}, attrs=dict(self.attrs),
                       reward_terms={k: v[:end] for k, v in self.reward_terms.items()})

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.rewards))


class EpisodeBuilder:
    """Collects one episode step by step; ``build()`` stacks it into an :class:`Episode`."""

    def __init__(self, obs: dict[str, np.ndarray], state: np.ndarray | None = None, **attrs: Any):
        self._obs = [obs]
        self._states = [] if state is None else [state]
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._terminated: list[bool] = []
        self._truncated: list[bool] = []
        self._extras: dict[str, list[Any]] = {}
        self._terms: dict[str, list[float]] = {}
        self.attrs: dict[str, Any] = dict(attrs)

    def __len__(self) -> int:
        return len(self._actions)

    def add(
        self,
        action: np.ndarray,
        reward: float,
        next_obs: dict[str, np.ndarray],
        terminated: bool,
        truncated: bool,
        next_state: np.ndarray | None = None,
        reward_terms: dict[str, float] | None = None,
        **extras: Any,
    ) -> None:
        """Append one step. ``next_state`` is the simulator state at ``next_obs``; ``reward_terms`` the
        step's ``info["reward_terms"]``."""
        self._actions.append(np.asarray(action, dtype=np.float32))
        self._rewards.append(float(reward))
        self._terminated.append(bool(terminated))
        self._truncated.append(bool(truncated))
        self._obs.append(next_obs)
        if next_state is not None:
            self._states.append(next_state)
        for key, value in extras.items():
            self._extras.setdefault(key, []).append(value)
        for key, value in (reward_terms or {}).items():
            self._terms.setdefault(key, []).append(float(value))

    def build(self) -> Episode:
        if not self._actions:
            raise ValueError("cannot build an episode with no steps")
        keys = self._obs[0].keys()
        stacked = {k: np.stack([o[k] for o in self._obs]) for k in keys}
        n = len(self._actions)
        for key, values in (*self._extras.items(), *self._terms.items()):
            if len(values) != n:
                raise ValueError(f"extra {key!r} was given on {len(values)} of {n} steps; give it on every step")
        return Episode(
            obs={k: v[:-1] for k, v in stacked.items()},
            next_obs={k: v[1:] for k, v in stacked.items()},
            actions=np.stack(self._actions),
            rewards=np.asarray(self._rewards, dtype=np.float32),
            terminated=np.asarray(self._terminated, dtype=bool),
            truncated=np.asarray(self._truncated, dtype=bool),
            states=np.stack(self._states[:n]) if len(self._states) > n else None,
            extras={k: np.asarray(v) for k, v in self._extras.items()},
            attrs=dict(self.attrs),
            reward_terms={k: np.asarray(v, np.float32) for k, v in self._terms.items()},
        )
