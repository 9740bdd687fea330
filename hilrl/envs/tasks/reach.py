"""Reach: move the tool centre point to a random goal."""

from __future__ import annotations

import mujoco
import numpy as np

from hilrl.envs.arm_env import ArmEnv


class ReachEnv(ArmEnv):
    """Move the tool centre point to a goal sampled in a box above the table.

    ``obs["object"]`` (3,): the goal position (m, world frame).
    Reward terms: ``distance`` (m) from the tool centre point to the goal.
    Dense reward: ``-distance``.
    Success: ``distance`` below ``success_tolerance`` (2 cm).
    """

    task_name = "Reach"
    xml_file = "reach.xml"
    default_max_episode_steps = 50
    object_dim = 3
    reward_terms = ("distance",)
    success_tolerance = 0.02
    goal_low = np.array([0.3, -0.25, 0.05])
    goal_high = np.array([0.65, 0.25, 0.33])

    def _task_cache_ids(self) -> None:
        self._goal_mocap = self.model.body("goal").mocapid[0]

    def _sample_task(self) -> None:
        self.data.mocap_pos[self._goal_mocap] = self.np_random.uniform(self.goal_low, self.goal_high)

    def _write_object_obs(self, out: np.ndarray) -> None:
        out[:] = self._mocap_pos[self._goal_mocap]

    def _reward_and_success(self) -> tuple[float, bool, dict[str, float]]:
        dist = mujoco.mju_dist3(self._tcp, self._mocap_pos[self._goal_mocap])
        return -dist, dist < self.success_tolerance, {"distance": dist}
