"""Build the environment an experiment config describes (local MuJoCo task or remote arm)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def make_env(config: Any, **overrides: Any) -> gym.Env:
    """``config`` is an :class:`hilrl.config.EnvConfig`; ``overrides`` win over its keywords.

    ``max_episode_steps`` is set on the task itself: passed to ``gymnasium.make``
    it would become an outer ``TimeLimit`` instead of the task's own limit.
    """
    import hilrl.envs  # noqa: F401  (registers the tasks)

    kwargs = {**config.make_kwargs(), **overrides}
    max_steps = kwargs.pop("max_episode_steps", None)
    if config.remote:
        from hilrl.envs.remote import RemoteArmEnv

        env = RemoteArmEnv(config.remote, task_id=config.id, client_key=config.client_key,
                           server_key=config.server_key, **kwargs)
    else:
        env = gym.make(config.id, **kwargs)
    if max_steps is not None:
        env.unwrapped.max_episode_steps = int(max_steps)
    if config.relative_positions:
        from hilrl.envs.wrappers import RelativePositions

        env = RelativePositions(env)
    return env
