"""Build the environment an experiment config describes (local MuJoCo task or remote arm)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def make_env(config: Any, **overrides: Any) -> gym.Env:
    """``config`` is an :class:`hilrl.config.EnvConfig`; ``overrides`` win over its keywords."""
    import hilrl.envs  # noqa: F401  (registers the tasks)

    kwargs = {**config.make_kwargs(), **overrides}
    if config.remote:
        from hilrl.envs.remote import RemoteArmEnv

        return RemoteArmEnv(config.remote, task_id=config.id, **kwargs)
    return gym.make(config.id, **kwargs)
