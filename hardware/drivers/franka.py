"""Franka Panda / FR3 through ``franky`` (``pip install franky-control``; the ``[real]`` extra).

Each ``move`` sends one asynchronous absolute Cartesian motion to the
validated target; franky's trajectory generator replaces the previous one,
so a 10 Hz stream of targets becomes smooth motion. ``hold`` sends a
Cartesian stop motion; ``estop`` does the same and the server latches it
(the arm's own hardware stop button stays the real e-stop).
"""

from __future__ import annotations

import importlib
from typing import Any

from hardware.driver import ArmCommand, ArmDriver, ArmState, DriverFault
from hardware.drivers.real import arm_state, real_arm_description
from hardware.drivers.rotations import rotate_by_rpy
from hardware.limits import RobotConfigError, FrankaDriverConfig


def _import_franky() -> Any:
    try:
        return importlib.import_module("franky")
    except ImportError:
        raise RobotConfigError("the franka driver needs franky: pip install 'hilrl[real]' (franky-control)") from None


class FrankaArmDriver(ArmDriver):
    name = "franka"

    def __init__(self, config: FrankaDriverConfig, workspace: tuple) -> None:
        self.franky = _import_franky()
        self.config = config
        self.workspace = workspace
        self.robot = self.franky.Robot(config.host)
        self.robot.relative_dynamics_factor = config.dynamics_factor
        self.gripper = self.franky.Gripper(config.host)
        self.max_width = float(self.gripper.max_width)
        self._gripper_command: float | None = None

    def describe(self) -> dict[str, Any]:
        return real_arm_description("franka", self.config, self.workspace)

    def read(self, images: bool = True) -> ArmState:
        pose = self.robot.current_cartesian_state.pose.end_effector_pose
        x, y, z, w = pose.quaternion  # Eigen order
        joints = self.robot.current_joint_state
        opening = min(max(float(self.gripper.width) / self.max_width, 0.0), 1.0)
        return arm_state(pose.translation, [w, x, y, z], opening, joints.position, joints.velocity)

    def reset(self, seed: int | None) -> ArmState:
        try:
            self.robot.recover_from_errors()
            self.robot.move(self.franky.JointMotion(list(self.config.home_joints)))  # blocking
            self.gripper.move_async(self.max_width, self.config.gripper_speed)
        except Exception as exc:  # franky raises its own exception types per libfranka error
            raise DriverFault(f"franky: {exc}") from exc
        self._gripper_command = 1.0
        return self.read()

    def move(self, command: ArmCommand) -> ArmState:
        current = self.read()
        quat = current.ee_quat if command.delta_rot is None else rotate_by_rpy(current.ee_quat, command.delta_rot)
        w, x, y, z = quat
        target = self.franky.Affine(command.target_pos.tolist(), [x, y, z, w])
        try:
            self.robot.move(self.franky.CartesianMotion(target, self.franky.ReferenceType.Absolute), asynchronous=True)
            if command.gripper != self._gripper_command:
                # Gripper command -1 (closed) .. +1 (open) maps linearly onto the finger width.
                width = (command.gripper + 1.0) / 2.0 * self.max_width
                self.gripper.move_async(width, self.config.gripper_speed)
                self._gripper_command = command.gripper
        except Exception as exc:
            raise DriverFault(f"franky: {exc}") from exc
        return self.read()

    def hold(self) -> None:
        self.robot.move(self.franky.CartesianStopMotion(), asynchronous=True)
