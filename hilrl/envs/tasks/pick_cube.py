"""PickCube: grasp a cube and lift it to a goal position in the air."""

from __future__ import annotations

import math

import mujoco
import numpy as np

from hilrl.envs.arm_env import ASSETS, ArmEnv, ArmEnvError
from hilrl.envs.tasks.sampling import OBJECT_HIGH, OBJECT_LOW, place_cube


class PickCubeEnv(ArmEnv):
    """Grasp a 5 cm cube and bring its centre within ``success_tolerance`` of a goal above the table.

    ``obs["object"]`` (10,): cube position (3), cube quaternion wxyz (4), goal position (3).
    Reward terms: ``reach = 1 - tanh(10 |tcp - cube|)``, ``grasped`` (1.0 when the cube is held
    between the fingers: the tool centre within 4 cm of its centre, a finger gap that fits it and both finger pads
    pressing on it with at least ``GRASP_FORCE``; else 0.0), ``place = 1 - tanh(10 |cube - goal|)`` and ``success`` (1.0 or 0.0).
    Dense reward in [0, 4]: ``4 if success else reach + grasped + grasped * place``: on success 4,
    one above the staged maximum (the shape ManiSkill uses for PickCube: its success reward also
    tops the stages). Without that step the stages pay almost as much for holding the cube a few
    cm off the goal as for success.
    Success: cube centre within 3 cm of the goal.

    Args (beyond :class:`~hilrl.envs.arm_env.ArmEnv`'s):
        block_height: height of the block (m, 0.02 to 0.2); its footprint stays 5 x 5 cm. The default 0.05
            is the cube; a taller block (``pick_tall`` in :mod:`hilrl.envs.tasks.variants`) is grasped
            too low by a grasp at its centre: the hand meets its top before the fingers reach the centre.
    """

    task_name = "PickCube"
    xml_file = "pick_cube.xml"
    default_max_episode_steps = 100
    dense_reward_max = 4.0
    object_dim = 10
    reward_terms = ("reach", "grasped", "place", "success")
    success_tolerance = 0.03
    cube_half = 0.025
    goal_z_range = (0.1, 0.3)

    def __init__(self, block_height: float = 0.05, **kwargs) -> None:
        if isinstance(block_height, bool) or not isinstance(block_height, (int, float)) or not 0.02 <= block_height <= 0.2:
            raise ArmEnvError(f"block_height={block_height!r}: give the block's height in metres, 0.02 to 0.2 "
                              "(0.05 is the cube).")
        self.block_half_height = float(block_height) / 2
        super().__init__(**kwargs)

    def _build_model(self) -> mujoco.MjModel:
        if self.block_half_height == self.cube_half:
            return super()._build_model()
        spec = mujoco.MjSpec.from_file(str(ASSETS / self.xml_file))
        spec.geom("cube").size = [self.cube_half, self.cube_half, self.block_half_height]
        spec.body("cube").pos = [0.5, 0.0, self.block_half_height]
        return spec.compile()

    def _task_cache_ids(self) -> None:
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._cube_qadr = self.model.joint("cube").qposadr[0]
        self._cube_geom = self.model.geom("cube").id

    def _sample_task(self) -> None:
        place_cube(self, self._cube_qadr, self.block_half_height)
        goal_xy = self.np_random.uniform(OBJECT_LOW, OBJECT_HIGH)
        goal_z = self.np_random.uniform(*self.goal_z_range)
        self.data.mocap_pos[self._goal_mocap] = (goal_xy[0], goal_xy[1], goal_z)

    def _write_object_obs(self, out: np.ndarray) -> None:
        out[0:7] = self._qpos[self._cube_qadr : self._cube_qadr + 7]
        out[7:10] = self._mocap_pos[self._goal_mocap]

    def is_grasped(self) -> bool:
        """Cube between the closed fingers: near the tool centre point and the fingers rest on it."""
        cube = self._qpos[self._cube_qadr : self._cube_qadr + 3]
        return self._grasped(mujoco.mju_dist3(self._tcp, cube))

    def _grasped(self, tcp_to_cube: float) -> bool:
        # a squeeze by both pads: geometry alone paid an open gripper hovering over the cube (a gap of
        # 5.4 cm around a 5 cm cube) the grasp reward every step, ~67 of value at gamma 0.97. With the
        # squeeze as evidence the tool centre may sit off the cube's centre (a cube held by its edge,
        # 2.8 cm off, lifted: not counted under the former 2 cm rule)
        return (tcp_to_cube < 0.04 and 1.6 * self.cube_half < self.gripper_opening() < 2.3 * self.cube_half
                and self.pads_squeeze(self._cube_geom))

    def _reward_and_success(self) -> tuple[float, bool, dict[str, float]]:
        cube = self._qpos[self._cube_qadr : self._cube_qadr + 3]
        to_goal = mujoco.mju_dist3(cube, self._mocap_pos[self._goal_mocap])
        tcp_to_cube = mujoco.mju_dist3(self._tcp, cube)
        grasped = float(self._grasped(tcp_to_cube))
        reach = 1.0 - math.tanh(10.0 * tcp_to_cube)
        place = 1.0 - math.tanh(10.0 * to_goal)
        success = to_goal < self.success_tolerance
        terms = {"reach": reach, "grasped": grasped, "place": place, "success": 1.0 if success else 0.0}
        return (self.dense_reward_max if success else reach + grasped + grasped * place), success, terms
