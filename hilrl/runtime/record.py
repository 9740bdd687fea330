"""Record demonstrations from a device (the scripted expert for now) into a robomimic-layout file."""

from __future__ import annotations

import os
from typing import Any

from hilrl.config import EnvConfig
from hilrl.data.hdf5 import DemoWriter
from hilrl.envs.make import make_env
from hilrl.feedback.experts import make_expert
from hilrl.runtime.progress import make_progress
from hilrl.runtime.rollout import RolloutStats, run_episode

DEVICES = ("expert",)


def record_demos(
    env_config: EnvConfig,
    out: str | os.PathLike,
    episodes: int,
    device: str = "expert",
    noise: float = 0.0,
    seed: int = 0,
    only_successes: bool = False,
    append: bool = False,
    show_progress: bool = True,
) -> RolloutStats:
    """Record ``episodes`` episodes; each is written and flushed as soon as it ends.

    Episode ``i`` is reset with seed ``seed + i``. With ``only_successes`` failed
    episodes are not written (they are still counted in the returned stats).
    """
    if device not in DEVICES:
        from hilrl.errors import HilrlError

        raise HilrlError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    env = make_env(env_config)
    expert = make_expert(env, noise=noise, seed=seed)
    stats = RolloutStats.empty()
    env_kwargs: dict[str, Any] = env_config.make_kwargs()
    env_kwargs["cameras"] = list(env_kwargs["cameras"])
    try:
        with DemoWriter(out, env_config.id, env_kwargs, append=append) as writer, make_progress(not show_progress) as bar:
            task = bar.add_task(f"record {env_config.id}", total=episodes, stats="")
            for i in range(episodes):
                expert.reset()
                episode = run_episode(env, expert, seed=seed + i)
                episode.attrs["device"] = device
                stats.add(episode)
                if episode.success or not only_successes:
                    writer.add(episode)
                bar.update(task, advance=1, stats=f"success {stats.success_rate:.0%} written {writer.num_demos}")
    finally:
        env.close()
    return stats
