"""Build the environment an experiment config describes (local MuJoCo task or remote arm)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


def make_env(config: Any, **overrides: Any) -> gym.Env:
    """``config`` is an :class:`hilrl.config.EnvConfig`; ``overrides`` win over its keywords.

    A foreign id (any gymnasium env but hilrl's tasks) is made with ``env.kwargs`` and presented through the env
    adapter ``env.adapter`` names (:mod:`hilrl.envs.adapter`).

    ``max_episode_steps`` goes to ``gymnasium.make``, which hands it to the task through the
    ``TaskTimeLimit`` wrapper the ids are registered with (see :mod:`hilrl.envs`), or to
    :class:`~hilrl.envs.remote.RemoteArmEnv`, which asks the robot server for it in its ``hello``.
    """
    import hilrl.envs  # noqa: F401  (registers the tasks)

    kwargs = {**config.make_kwargs(), **overrides}
    if getattr(config, "foreign", False):
        from hilrl.envs.adapter import adapt_env, import_env_package

        import_env_package(config.id, config.package)  # (a config dumped and read back imports it again)
        if "render_mode" not in kwargs and _renders_rgb(config.id):
            kwargs["render_mode"] = "rgb_array"  # frames for videos, the labelling page and replays, on request
        return adapt_env(gym.make(config.id, **kwargs), config)
    if config.remote:
        from hilrl.envs.remote import RemoteArmEnv

        env = RemoteArmEnv(config.remote, task_id=config.id, client_key=config.client_key,
                           server_key=config.server_key, **kwargs)
    else:
        env = gym.make(config.id, **kwargs)
    if getattr(config, "expert", None):  # the scripted policy the config names, kept where make_expert looks
        env.unwrapped.expert = config.expert
    if config.relative_positions:
        from hilrl.envs.wrappers import RelativePositions

        env = RelativePositions(env)
    return env


def _renders_rgb(env_id: str) -> bool:
    """Whether the env class registered as ``env_id`` lists the ``rgb_array`` render mode (read without making it)."""
    from gymnasium.envs.registration import load_env_creator

    entry_point = gym.spec(env_id).entry_point
    try:
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    except (ImportError, AttributeError):
        return False
    return "rgb_array" in (getattr(creator, "metadata", None) or {}).get("render_modes", ())
