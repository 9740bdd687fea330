"""A kinematic point arm: the end effector reaches each commanded target within the step.

No physics and no task. It exists so the server, the safety layer and the
transport can be exercised (and benchmarked) without MuJoCo; the ``sim``
driver is the reference arm for everything that involves motion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hardware.driver import ArmCommand, ArmDriver, ArmState
from hardware.limits import SafetyLimits
from hilrl.envs.protocol import space_to_wire


class KinematicArmDriver(ArmDriver):
    name = "kinematic"

    def __init__(self, limits: SafetyLimits) -> None:
        low, high = np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)
        self.home = (low + high) / 2.0
        self.ee_pos = self.home.copy()
        self.gripper = 1.0
        self.observation_space = spaces.Dict(
            {
                "ee_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
                "ee_quat": spaces.Box(-1.0, 1.0, (4,), np.float32),
                "gripper": spaces.Box(-1.0, 1.0, (1,), np.float32),
            }
        )

    def describe(self) -> dict[str, Any]:
        return {
            "task_id": None,
            "task_name": "kinematic",
            "observation_space": space_to_wire(self.observation_space),
            "action_space": space_to_wire(spaces.Box(-1.0, 1.0, (4,), np.float32)),
            "action_scale": None,
        }

    def _state(self) -> ArmState:
        quat = np.array([0.0, 1.0, 0.0, 0.0])  # pointing down
        obs = {
            "ee_pos": self.ee_pos.astype(np.float32),
            "ee_quat": quat.astype(np.float32),
            "gripper": np.array([self.gripper], np.float32),
        }
        return ArmState(self.ee_pos.copy(), quat, self.gripper, np.zeros(0), np.zeros(0), obs, None)

    def reset(self, seed: int | None) -> ArmState:
        self.ee_pos = self.home.copy()
        self.gripper = 1.0
        return self._state()

    def move(self, command: ArmCommand) -> ArmState:
        self.ee_pos = command.target_pos.copy()
        self.gripper = command.gripper
        return self._state()

    def read(self, images: bool = True) -> ArmState:
        return self._state()

    def hold(self) -> None:
        pass
