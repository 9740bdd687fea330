"""Run whole episodes with any action function; the loop behind recording and evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hilrl.data.episode import Episode, EpisodeBuilder

ActFn = Callable[[dict[str, np.ndarray]], np.ndarray]
FrameSink = Callable[[np.ndarray], None]


def run_episode(
    env: gym.Env,
    act: ActFn,
    seed: int | None = None,
    record_states: bool = True,
    on_frame: FrameSink | None = None,
) -> Episode:
    """One episode from ``reset(seed)`` until ``terminated`` or ``truncated``.

    With ``record_states`` the full simulator state is stored at every step,
    which is what makes state-exact replay possible.
    """
    base = env.unwrapped
    get_state = getattr(base, "get_state", None) if record_states else None
    obs, _ = env.reset(seed=seed)
    builder = EpisodeBuilder(obs, get_state() if get_state else None, seed=-1 if seed is None else int(seed))
    if on_frame is not None:
        on_frame(env.render())
    info: dict = {}
    while True:
        action = np.asarray(act(obs), dtype=np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action)
        builder.add(action, reward, next_obs, terminated, truncated, get_state() if get_state else None,
                    reward_terms=info.get("reward_terms"), is_success=bool(info.get("is_success", False)))
        if on_frame is not None:
            on_frame(env.render())
        obs = next_obs
        if terminated or truncated:
            break
    builder.attrs["success"] = bool(info.get("is_success", False))
    return builder.build()


@dataclass
class RolloutStats:
    episodes: int
    successes: int
    returns: list[float]
    lengths: list[int]

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else 0.0

    def add(self, episode: Episode) -> None:
        self.episodes += 1
        self.successes += int(episode.success)
        self.returns.append(episode.episode_return)
        self.lengths.append(len(episode))

    @classmethod
    def empty(cls) -> RolloutStats:
        return cls(0, 0, [], [])
