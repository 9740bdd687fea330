"""Replay recorded episodes in an environment: state-exact, or open-loop from actions.

The environment is passed in (``env.unwrapped`` must offer ``set_state`` and
``get_obs``), so this module needs nothing from ``hilrl.envs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hilrl.data.episode import Episode
from hilrl.errors import HilrlError

FrameSink = Callable[[np.ndarray], None]


@dataclass
class ReplayResult:
    """How far a replay drifted from the recording.

    ``max_obs_error`` is the largest absolute difference over all steps and
    observation keys (images compared in pixel units); ``diverged`` says it
    exceeded the tolerance.
    """

    name: str
    mode: str
    steps: int
    max_obs_error: float
    worst_key: str
    diverged: bool


def _obs_error(recorded: dict[str, np.ndarray], t: int, replayed: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, worst_key = 0.0, ""
    for key, values in recorded.items():
        if key not in replayed:
            continue
        err = float(np.max(np.abs(values[t].astype(np.float64) - np.asarray(replayed[key], dtype=np.float64)), initial=0.0))
        if err > worst:
            worst, worst_key = err, key
    return worst, worst_key


def _require_states(episode: Episode) -> np.ndarray:
    if episode.states is None:
        raise HilrlError(f"{episode.attrs.get('name', 'episode')}: has no 'states'; only files with simulator "
                         "states can be replayed (use --mode actions for open-loop replay)")
    return episode.states


def _reset_like_recording(episode: Episode, env: gym.Env) -> None:
    """Reset with the recorded seed (wrappers require a reset before stepping or rendering)."""
    seed = episode.attrs.get("seed")
    env.reset(seed=int(seed) if seed is not None and int(seed) >= 0 else None)


def replay_states(episode: Episode, env: gym.Env, atol: float = 1e-5, on_frame: FrameSink | None = None) -> ReplayResult:
    """Set every recorded state and compare the observation the env produces with the recorded one."""
    states = _require_states(episode)
    _reset_like_recording(episode, env)
    base = env.unwrapped
    worst, worst_key = 0.0, ""
    for t in range(len(episode)):
        base.set_state(states[t])
        err, key = _obs_error(episode.obs, t, base.get_obs())
        if err > worst:
            worst, worst_key = err, key
        if on_frame is not None:
            on_frame(env.render())
    return ReplayResult(episode.attrs.get("name", ""), "states", len(episode), worst, worst_key, worst > atol)


def replay_actions(episode: Episode, env: gym.Env, atol: float = 1e-3, on_frame: FrameSink | None = None) -> ReplayResult:
    """Start from the recorded first state and execute the recorded actions open-loop.

    Divergence here is expected to grow with contact-rich tasks; the result reports it.
    """
    states = _require_states(episode)
    _reset_like_recording(episode, env)
    env.unwrapped.set_state(states[0])
    worst, worst_key = 0.0, ""
    steps = 0
    for t in range(len(episode)):
        obs, *_ = env.step(episode.actions[t])
        steps += 1
        err, key = _obs_error(episode.next_obs, t, obs)
        if err > worst:
            worst, worst_key = err, key
        if on_frame is not None:
            on_frame(env.render())
    return ReplayResult(episode.attrs.get("name", ""), "actions", steps, worst, worst_key, worst > atol)
