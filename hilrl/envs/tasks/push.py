"""Push: push a cube across the table into a goal region with the closed gripper."""

from __future__ import annotations

import math

import mujoco
import numpy as np

from hilrl.envs.arm_env import ASSETS, ArmEnv, ArmEnvError
from hilrl.envs.tasks.sampling import place_cube, sample_goal_near


class PushEnv(ArmEnv):
    """Push a 5 cm cube so that its centre ends within ``success_tolerance`` of a goal on the table.

    ``obs["object"]`` (10,): cube position (3), cube quaternion wxyz (4), goal position (3; z = 0).
    Reward terms (m): ``reach_distance`` = ``|tcp - cube|`` and ``goal_distance`` = ``|cube_xy - goal_xy|``.
    Dense reward: ``-(reach_distance + 2 * goal_distance)``: reach the cube, then move it.
    Success: cube centre within 3 cm of the goal in xy, cube still on the table.

    Args (beyond :class:`~hilrl.envs.arm_env.ArmEnv`'s):
        table_friction: sliding friction of the table and the cube (MuJoCo takes the larger of the two
            geoms'); None keeps the scene's (table 1.0, cube 0.6). A slippery table (``push_ice`` in
            :mod:`hilrl.envs.tasks.variants`, 0.05) lets a fast push slide the cube past its goal.
    """

    task_name = "Push"
    xml_file = "push.xml"
    default_max_episode_steps = 100
    object_dim = 10
    reward_terms = ("reach_distance", "goal_distance")
    success_tolerance = 0.03
    cube_half = 0.025

    def __init__(self, table_friction: float | None = None, **kwargs) -> None:
        if table_friction is not None and (isinstance(table_friction, bool) or not isinstance(table_friction, (int, float))
                                           or not 0.0 < table_friction <= 2.0):
            raise ArmEnvError(f"table_friction={table_friction!r}: give a sliding friction in (0, 2], or None for "
                              "the scene's.")
        self.table_friction = None if table_friction is None else float(table_friction)
        super().__init__(**kwargs)

    def _build_model(self) -> mujoco.MjModel:
        if self.table_friction is None:
            return super()._build_model()
        spec = mujoco.MjSpec.from_file(str(ASSETS / self.xml_file))
        for name in ("table", "cube"):
            spec.geom(name).friction = [self.table_friction, 0.005, 0.0001]
        return spec.compile()

    def _task_cache_ids(self) -> None:
        self._goal_mocap = self.model.body("goal").mocapid[0]
        self._cube_qadr = self.model.joint("cube").qposadr[0]

    def _sample_task(self) -> None:
        cube_xy = place_cube(self, self._cube_qadr)
        goal_xy = sample_goal_near(self.np_random, cube_xy, min_dist=0.1, max_dist=0.2)
        self.data.mocap_pos[self._goal_mocap] = (goal_xy[0], goal_xy[1], 0.001)

    def _write_object_obs(self, out: np.ndarray) -> None:
        out[0:7] = self._qpos[self._cube_qadr : self._cube_qadr + 7]
        out[7:10] = self._mocap_pos[self._goal_mocap]

    def _reward_and_success(self) -> tuple[float, bool, dict[str, float]]:
        cube = self._qpos[self._cube_qadr : self._cube_qadr + 3]
        goal = self._mocap_pos[self._goal_mocap]
        to_goal = math.hypot(cube[0] - goal[0], cube[1] - goal[1])
        reach = mujoco.mju_dist3(self._tcp, cube)
        success = to_goal < self.success_tolerance and cube[2] < 2 * self.cube_half
        return -(reach + 2.0 * to_goal), success, {"reach_distance": reach, "goal_distance": to_goal}
