"""MuJoCo arm tasks for hilrl: ``hilrl/Reach-v0``, ``hilrl/Push-v0``, ``hilrl/PickCube-v0``, ``hilrl/PegInsert-v0``.

Any other gymnasium env runs through an env adapter (:mod:`hilrl.envs.adapter`, ``env.id`` + ``env.kwargs``).

The ids are registered by ``import hilrl`` (string entry points, so that import loads no
MuJoCo); importing this module registers them too, if they are not already.

The time limit lives inside each task (``max_episode_steps`` constructor kwarg, default per task),
so it survives ``set_state`` and works through the robot server. ``gym.make(id, max_episode_steps=N)``
works for any ``N``, above or below the default: gymnasium wraps its ``TimeLimit(N)`` and the
``TaskTimeLimit`` wrapper every id is registered with sets the task's own limit to ``N``
(``env.unwrapped.max_episode_steps == N``; the episode truncates at step ``N``). Without it the
task truncates at its default and no ``TimeLimit`` is added.
"""

import os

# Offscreen rendering without a display; must be set before mujoco creates a GL context.
os.environ.setdefault("MUJOCO_GL", "egl")

from hilrl import ENV_ENTRY_POINTS, register_envs  # noqa: E402
from hilrl.envs.adapter import ENV_ADAPTERS, GymnasiumAdapter, register_adapter  # noqa: E402
from hilrl.envs.arm_env import ArmEnv, ArmEnvError  # noqa: E402
from hilrl.envs.tasks import PegInsertEnv, PickCubeEnv, PushEnv, ReachEnv  # noqa: E402

TASKS: dict[str, type[ArmEnv]] = {
    "Reach": ReachEnv,
    "Push": PushEnv,
    "PickCube": PickCubeEnv,
    "PegInsert": PegInsertEnv,
}
ENV_IDS: dict[str, str] = {name: f"hilrl/{name}-v0" for name in TASKS}
assert {ENV_IDS[n]: f"{c.__module__}:{c.__name__}" for n, c in TASKS.items()} == ENV_ENTRY_POINTS

register_envs()

__all__ = ["ENV_ADAPTERS", "ENV_IDS", "TASKS", "ArmEnv", "ArmEnvError", "GymnasiumAdapter", "register_adapter", "PegInsertEnv", "PickCubeEnv", "PushEnv", "ReachEnv"]
