"""The hilrl arm tasks: one small subclass of :class:`hilrl.envs.arm_env.ArmEnv` each."""

from hilrl.envs.tasks.peg_insert import PegInsertEnv
from hilrl.envs.tasks.pick_cube import PickCubeEnv
from hilrl.envs.tasks.push import PushEnv
from hilrl.envs.tasks.reach import ReachEnv

__all__ = ["PegInsertEnv", "PickCubeEnv", "PushEnv", "ReachEnv"]
