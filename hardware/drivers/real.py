"""What the real-arm drivers share: their observation (the sim tasks' proprioceptive keys) and description."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hardware.driver import ArmState
from hilrl.envs.protocol import space_to_wire


def proprio_space(n_joints: int) -> spaces.Dict:
    """The observation a real arm gives: the proprioceptive keys of the sim tasks."""
    return spaces.Dict({
        "ee_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
        "ee_quat": spaces.Box(-1.0, 1.0, (4,), np.float32),
        "gripper": spaces.Box(0.0, 1.0, (1,), np.float32),
        "joint_pos": spaces.Box(-np.inf, np.inf, (n_joints,), np.float32),
        "joint_vel": spaces.Box(-np.inf, np.inf, (n_joints,), np.float32),
    })


def real_arm_description(name: str, config: Any, workspace: tuple) -> dict[str, Any]:
    return {
        "task_id": None,
        "task_name": name,
        "observation_space": space_to_wire(proprio_space(len(config.home_joints))),
        "action_space": space_to_wire(spaces.Box(-1.0, 1.0, (7 if config.use_rotation else 4,), np.float32)),
        "action_scale": config.action_scale,
        "rotation_scale": config.rotation_scale,
        "use_rotation": config.use_rotation,
        "workspace": [np.asarray(workspace[0], float), np.asarray(workspace[1], float)],
        "cameras": [],
    }


def arm_state(ee_pos, ee_quat_wxyz, gripper_opening, joint_pos, joint_vel) -> ArmState:
    ee_pos, ee_quat = np.asarray(ee_pos, float), np.asarray(ee_quat_wxyz, float)
    joint_pos, joint_vel = np.asarray(joint_pos, float), np.asarray(joint_vel, float)
    obs = {
        "ee_pos": ee_pos.astype(np.float32),
        "ee_quat": ee_quat.astype(np.float32),
        "gripper": np.array([gripper_opening], np.float32),
        "joint_pos": joint_pos.astype(np.float32),
        "joint_vel": joint_vel.astype(np.float32),
    }
    return ArmState(ee_pos, ee_quat, float(gripper_opening), joint_pos, joint_vel, obs, None)
