"""Build the environment an experiment config describes (local MuJoCo task or remote arm)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def make_env(config: Any, **overrides: Any) -> gym.Env:
    """``config`` is an :class:`hilrl.config.EnvConfig`; ``overrides`` win over its keywords.

    ``max_episode_steps`` goes to ``gymnasium.make``, which hands it to the task through the
    ``TaskTimeLimit`` wrapper the ids are registered with (see :mod:`hilrl.envs`), or to
    :class:`~hilrl.envs.remote.RemoteArmEnv`, which asks the robot server for it in its ``hello``.
    """
    import hilrl.envs  # noqa: F401  (registers the tasks)

    kwargs = {**config.make_kwargs(), **overrides}
    if config.remote:
        from hilrl.envs.remote import RemoteArmEnv

        env = RemoteArmEnv(config.remote, task_id=config.id, client_key=config.client_key,
                           server_key=config.server_key, **kwargs)
    else:
        env = gym.make(config.id, **kwargs)
    if config.relative_positions:
        from hilrl.envs.wrappers import RelativePositions

        env = RelativePositions(env)
    return env
