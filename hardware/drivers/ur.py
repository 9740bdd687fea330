"""Universal Robots arms through ``ur_rtde`` (``pip install ur-rtde``; the ``[real]`` extra).

Each ``move`` streams the validated target with ``servoL`` (one call per
control period, ``dt = 1 / control_hz``); ``hold`` ends servoing with
``servoStop``; ``estop`` triggers the controller's protective stop, which
``clear_error`` cannot undo from here: unlock it on the teach pendant.
No gripper: UR grippers vary; the gripper command is checked but not sent,
and the state reports the last command.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from hardware.driver import ArmCommand, ArmDriver, ArmState, DriverFault
from hardware.drivers.real import arm_state, real_arm_description
from hardware.drivers.rotations import axis_angle_from_quat, quat_from_axis_angle, rotate_by_rpy
from hardware.limits import RobotConfigError, URDriverConfig


def _import_rtde() -> tuple[Any, Any]:
    try:
        return importlib.import_module("rtde_control"), importlib.import_module("rtde_receive")
    except ImportError:
        raise RobotConfigError("the ur driver needs ur_rtde: pip install 'hilrl[real]' (ur-rtde)") from None


class URArmDriver(ArmDriver):
    name = "ur"

    def __init__(self, config: URDriverConfig, workspace: tuple, control_hz: float) -> None:
        rtde_control, rtde_receive = _import_rtde()
        self.config = config
        self.workspace = workspace
        self.period = 1.0 / control_hz
        self.control = rtde_control.RTDEControlInterface(config.host)
        self.receive = rtde_receive.RTDEReceiveInterface(config.host)
        self._gripper = 1.0

    def describe(self) -> dict[str, Any]:
        return real_arm_description("ur", self.config, self.workspace)

    def read(self, images: bool = True) -> ArmState:
        pose = np.asarray(self.receive.getActualTCPPose(), float)
        quat = quat_from_axis_angle(pose[3:])
        opening = (self._gripper + 1.0) / 2.0
        return arm_state(pose[:3], quat, opening, self.receive.getActualQ(), self.receive.getActualQd())

    def reset(self, seed: int | None) -> ArmState:
        self.control.servoStop()
        if not self.control.moveJ(list(self.config.home_joints)):
            raise DriverFault("ur_rtde moveJ to home_joints failed; check the pendant for a protective stop")
        self._gripper = 1.0
        return self.read()

    def move(self, command: ArmCommand) -> ArmState:
        current = self.read()
        quat = current.ee_quat if command.delta_rot is None else rotate_by_rpy(current.ee_quat, command.delta_rot)
        pose = [*command.target_pos.tolist(), *axis_angle_from_quat(quat).tolist()]
        c = self.config
        if not self.control.servoL(pose, c.servo_speed, c.servo_acceleration, self.period, c.servo_lookahead_s, c.servo_gain):
            raise DriverFault("ur_rtde servoL refused the target; the controller may be in a protective stop")
        self._gripper = command.gripper
        return self.read()

    def hold(self) -> None:
        self.control.servoStop()

    def estop(self) -> None:
        self.control.servoStop()
        self.control.triggerProtectiveStop()

    def close(self) -> None:
        self.control.stopScript()
