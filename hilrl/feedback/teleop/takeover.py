"""A teleop device as an :class:`~hilrl.feedback.interventions.InterventionSource` (HIL-SERL semantics).

HIL-SERL (Luo et al. 2024, rail-berkeley/hil-serl): the device's action replaces the policy's when
the device moves beyond a tiny dead-zone or a button is pressed. Here that is: the mapped
translation/rotation has norm above ``dead_zone``, or ``intervene`` is held, or the
person changed the gripper command. Otherwise the policy acts. The person's ``success`` and
``failure`` buttons end the episode (:attr:`DeviceInterventionist.verdict`, read by
:class:`~hilrl.feedback.interventions.InterventionWrapper`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hilrl.feedback.teleop.base import FrameMap, TeleopCommand, TeleopDevice, TeleopError, make_device

# In action units (1.0 = one action_scale step). HIL-SERL uses a near-zero threshold on the
# SpaceMouse; 0.05 (17 raw counts of 350) keeps a resting hand or a drifting stick from taking over.
DEFAULT_DEAD_ZONE = 0.05


class DeviceInterventionist:
    """Lets a person take over from the policy with a :class:`TeleopDevice`.

    Args:
        device: the device to read once per step.
        dead_zone: norm of the mapped motion part above which the device takes over.
        frame_map: device -> action frame; default the device's own ``frame_map``.
        owns_device: :meth:`close` closes the device (it was opened for this source).
        action_map: a foreign env's :class:`~hilrl.envs.adapter.ArmActionMap` (``env.action_map``): the device's
            arm action goes to the env's dimensions it names (the others keep the policy's action).

    ``last_command`` holds the latest reading, so a training loop can act on the
    ``success``/``failure``/``rerecord`` buttons, which an intervention source cannot.
    """

    def __init__(self, device: TeleopDevice, dead_zone: float = DEFAULT_DEAD_ZONE, frame_map: FrameMap | None = None,
                 owns_device: bool = False, action_map: Any = None):
        if not dead_zone >= 0.0:
            raise TeleopError(f"dead_zone must be >= 0 (action units), got {dead_zone}")
        self.device = device
        self.dead_zone = float(dead_zone)
        self.frame_map = frame_map or device.frame_map
        self.last_command: TeleopCommand | None = None
        self._last_gripper: float | None = None
        self.owns_device = owns_device
        self.action_map = action_map

    @classmethod
    def from_config(cls, config: Any, context: Any) -> DeviceInterventionist:
        """``intervention.source: device`` (registered in :mod:`hilrl.feedback.interventions`): the caller's open
        device (``context.device``, which the caller closes), else ``config.device`` opened here and closed with
        the env."""
        action_map = getattr(context.env.unwrapped, "action_map", None)
        if context.device is not None:
            return cls(context.device, dead_zone=config.dead_zone, action_map=action_map)
        return cls(make_device(config.device), dead_zone=config.dead_zone, owns_device=True, action_map=action_map)

    def close(self) -> None:
        """Release the device if this source opened it (``owns_device``); the env's ``close`` calls this."""
        if self.owns_device:
            self.device.close()

    def reset(self) -> None:
        self.device.reset()
        self.last_command = None
        self._last_gripper = None

    @property
    def verdict(self) -> str | None:
        """``"success"`` or ``"failure"`` when the person pressed that button at the last read, else ``None``."""
        buttons = self.last_command.buttons if self.last_command is not None else frozenset()
        return "success" if "success" in buttons else "failure" if "failure" in buttons else None

    def __call__(self, obs: dict[str, np.ndarray], policy_action: np.ndarray) -> np.ndarray | None:
        self.device.observe(obs)
        command = self.device.read()
        self.last_command = command
        policy_action = np.asarray(policy_action, dtype=np.float32)
        if self.action_map is None:
            action = self.frame_map.to_action(command, policy_action.size, gripper=float(policy_action[-1]))
            moved = float(np.linalg.norm(action[:-1])) > self.dead_zone
        else:  # a foreign env: the arm action, then put at the env's dimensions
            arm_dim = 7 if self.action_map.rotation is not None else 4
            arm = self.frame_map.to_action(command, arm_dim, gripper=float(self.action_map.to_arm(policy_action,
                                                                                                  arm_dim)[-1]))
            moved = float(np.linalg.norm(arm[:-1])) > self.dead_zone
            action = self.action_map.to_env(arm, policy_action.size, base=policy_action)
        gripper_changed = command.gripper is not None and command.gripper != self._last_gripper
        self._last_gripper = command.gripper
        if moved or gripper_changed or "intervene" in command.buttons:
            return action
        return None
