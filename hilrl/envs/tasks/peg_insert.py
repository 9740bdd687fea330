"""PegInsert: pick up a square peg and insert it into the hole of a block fixed on the table."""

from __future__ import annotations

import math

import numpy as np

from hilrl.envs.arm_env import ArmEnv
from hilrl.envs.tasks.sampling import MAX_YAW


class PegInsertEnv(ArmEnv):
    """Pick an upright 2.4 x 2.4 x 8 cm peg and insert it into a 3.2 cm square hole in a 5 cm high block.

    The block is a mocap body (fixed during the episode, randomised at reset, part of the MuJoCo state).
    ``obs["object"]`` (10,): peg centre position (3), peg quaternion wxyz (4), hole top centre (3).
    Reward terms: ``reach = 1 - tanh(10 |tcp - grasp point|)``, ``grasped`` (1.0 when the peg is held
    between the fingers, squeezed by both pads, else 0.0), ``align = 1 - tanh(20 |peg_xy - hole_xy|)`` and ``insert`` =
    insertion depth / ``success_depth`` clipped to [0, 1]. The depth is measured from the block top
    wherever the peg is, so ``insert`` is also 1 for a peg lying on the table: it means insertion only
    together with ``align`` near 1, as the reward uses it.
    Dense reward in [0, 4]: ``reach + grasped + grasped * (align + align * insert)``.
    Success: the peg bottom is at least ``success_depth`` (3 cm) below the block top, the peg
    centre is within 1 cm of the hole axis and the peg is tilted less than 10 degrees.
    """

    task_name = "PegInsert"
    xml_file = "peg_insert.xml"
    default_max_episode_steps = 100
    dense_reward_max = 4.0
    object_dim = 10
    reward_terms = ("reach", "grasped", "align", "insert")
    peg_half = np.array([0.012, 0.012, 0.04])
    block_height = 0.05
    grasp_offset = 0.015  # grasp point above the peg centre (m)
    success_depth = 0.03
    success_xy = 0.01
    success_cos_tilt = float(np.cos(np.deg2rad(10.0)))

    def _task_cache_ids(self) -> None:
        self._hole_mocap = self.model.body("hole").mocapid[0]
        self._peg_qadr = self.model.joint("peg").qposadr[0]
        self._peg_body = self.model.body("peg").id
        self._peg_geom = self.model.geom("peg").id
        self._xmat = self.data.xmat
        self._peg_half_width = float(self.peg_half[0])
        self._peg_half_height = float(self.peg_half[2])

    def _sample_task(self) -> None:
        rng = self.np_random
        side = rng.choice([-1.0, 1.0])  # peg on one side of the table, hole on the other
        peg_xy = (rng.uniform(0.4, 0.55), side * rng.uniform(0.06, 0.18))
        hole_xy = (rng.uniform(0.4, 0.6), -side * rng.uniform(0.06, 0.18))
        yaw = rng.uniform(-MAX_YAW, MAX_YAW) * 0.4
        q = self.data.qpos
        q[self._peg_qadr : self._peg_qadr + 3] = (peg_xy[0], peg_xy[1], self.peg_half[2])
        q[self._peg_qadr + 3 : self._peg_qadr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        self.data.mocap_pos[self._hole_mocap] = (hole_xy[0], hole_xy[1], 0.0)

    def _write_object_obs(self, out: np.ndarray) -> None:
        out[0:7] = self._qpos[self._peg_qadr : self._peg_qadr + 7]
        out[7:10] = self._mocap_pos[self._hole_mocap]
        out[9] += self.block_height

    def _tcp_to_grasp_point(self) -> float:
        peg = self._qpos[self._peg_qadr : self._peg_qadr + 3]
        tcp = self._tcp
        return math.sqrt((tcp[0] - peg[0]) ** 2 + (tcp[1] - peg[1]) ** 2 + (tcp[2] - peg[2] - self.grasp_offset) ** 2)

    def is_grasped(self) -> bool:
        return self._grasped(self._tcp_to_grasp_point())

    def _grasped(self, tcp_to_grasp: float) -> bool:
        # both pads must squeeze the peg (as in PickCube: a fitting gap alone pays an open hover)
        return (tcp_to_grasp < 0.025 and 1.6 * self._peg_half_width < self.gripper_opening() < 2.6 * self._peg_half_width
                and self.pads_squeeze(self._peg_geom))

    def _reward_and_success(self) -> tuple[float, bool, dict[str, float]]:
        peg = self._qpos[self._peg_qadr : self._peg_qadr + 3]
        axis_z = abs(float(self._xmat[self._peg_body, 8]))  # z component of the peg's long axis
        hole = self._mocap_pos[self._hole_mocap]
        depth = hole[2] + self.block_height - (peg[2] - self._peg_half_height * axis_z)
        xy_err = math.hypot(peg[0] - hole[0], peg[1] - hole[1])
        success = depth >= self.success_depth and xy_err < self.success_xy and axis_z > self.success_cos_tilt
        tcp_to_grasp = self._tcp_to_grasp_point()
        reach = 1.0 - math.tanh(10.0 * tcp_to_grasp)
        grasped = float(self._grasped(tcp_to_grasp))
        align = 1.0 - math.tanh(20.0 * xy_err)
        insert = float(min(max(depth / self.success_depth, 0.0), 1.0))
        terms = {"reach": reach, "grasped": grasped, "align": align, "insert": insert}
        return reach + grasped + grasped * (align + align * insert), bool(success), terms
