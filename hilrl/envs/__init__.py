"""MuJoCo arm tasks for hilrl. Importing this module registers the gymnasium ids:

``hilrl/Reach-v0``, ``hilrl/Push-v0``, ``hilrl/PickCube-v0``, ``hilrl/PegInsert-v0``.

The time limit is handled inside each env (``max_episode_steps`` constructor kwarg), so the
ids are registered without gymnasium's ``TimeLimit``. Note that ``gym.make(id, max_episode_steps=N)``
does not reach the env (gymnasium consumes that argument and adds a ``TimeLimit`` wrapper);
to raise the limit above a task's default pass it to the class or set
``env.unwrapped.max_episode_steps``.
"""

import os

# Offscreen rendering without a display; must be set before mujoco creates a GL context.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from hilrl.envs.arm_env import ArmEnv, ArmEnvError  # noqa: E402
from hilrl.envs.tasks import PegInsertEnv, PickCubeEnv, PushEnv, ReachEnv  # noqa: E402

TASKS: dict[str, type[ArmEnv]] = {
    "Reach": ReachEnv,
    "Push": PushEnv,
    "PickCube": PickCubeEnv,
    "PegInsert": PegInsertEnv,
}
ENV_IDS: dict[str, str] = {name: f"hilrl/{name}-v0" for name in TASKS}

for _name, _cls in TASKS.items():
    if ENV_IDS[_name] not in gym.registry:
        gym.register(id=ENV_IDS[_name], entry_point=f"{_cls.__module__}:{_cls.__name__}")

__all__ = ["ENV_IDS", "TASKS", "ArmEnv", "ArmEnvError", "PegInsertEnv", "PickCubeEnv", "PushEnv", "ReachEnv"]
