"""``ArmDriver``: the small interface between the robot server and one arm.

The server validates and limits every command before a driver sees it, so a
driver may trust its inputs: a target inside the workspace box, a step within
the jump limit, a gripper command inside its range, finite numbers only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hilrl.errors import HilrlError


class DriverFault(HilrlError, RuntimeError):
    """The arm or its controller failed; the server latches a fault until ``clear_error``."""


class NotReady(HilrlError, RuntimeError):
    """The driver cannot take this command yet (e.g. ``step`` before the first ``reset``); nothing latches."""


@dataclass
class ArmState:
    """What the arm reports. Positions in metres in the base frame; ``ee_quat`` is (w, x, y, z)."""

    ee_pos: np.ndarray  # (3,) float64
    ee_quat: np.ndarray  # (4,) float64
    gripper: float
    joint_pos: np.ndarray
    joint_vel: np.ndarray
    # The observation the policy sees. A task-running driver gives the task's obs dict
    # (images included when asked); a real arm driver gives the proprioceptive keys.
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    # Reward/termination signals when the driver runs a task (the sim driver); None on a real arm.
    task: dict[str, Any] | None = None


@dataclass(frozen=True)
class ArmCommand:
    """One validated end-effector command for one control step."""

    target_pos: np.ndarray  # (3,) absolute target, inside the workspace box
    delta_pos: np.ndarray  # (3,) target_pos - current ee_pos (the exact client delta when unclipped)
    delta_rot: np.ndarray | None  # (3,) roll/pitch/yaw increment in radians, or None
    gripper: float


class ArmDriver(ABC):
    """One arm. Methods are called from the server's single thread, never concurrently."""

    name: str = "arm"

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Static facts for ``hello``: ``observation_space``/``action_space`` (protocol.space_to_wire),
        ``action_scale`` (metres and radians per unit action), ``task_name`` and any task keywords."""

    @abstractmethod
    def reset(self, seed: int | None) -> ArmState:
        """Move to the start pose (a new episode for a task driver) and return the state there."""

    @abstractmethod
    def move(self, command: ArmCommand) -> ArmState:
        """Execute one control step toward ``command`` and return the state after it."""

    @abstractmethod
    def read(self, images: bool = True) -> ArmState:
        """Return the current state without moving."""

    @abstractmethod
    def hold(self) -> None:
        """Stop moving and keep the current pose (used by the watchdog, e-stop and shutdown)."""

    def prepare_task(self, task: dict[str, Any]) -> Any:
        """Check what a client's ``hello`` asks to be served (``task``: a validated map with any of
        ``protocol.HELLO_TASK_FIELDS``) against the robot config. Return something to hand to
        :meth:`switch_task` when serving it needs a new task, ``None`` when the driver already serves
        it; raise ``hardware.limits.CommandRejected`` (saying what the config allows) to refuse it.
        A driver that runs no task (a real arm) ignores the request: the default returns ``None``."""
        return None

    def switch_task(self, prepared: Any) -> None:
        """Build and start serving what :meth:`prepare_task` returned; the arm is at its start pose
        afterwards and the next ``move`` needs a ``reset``. Raise ``CommandRejected`` if it cannot be
        built; the task served before must then still be served."""
        raise NotImplementedError(f"{type(self).__name__} prepared a task it cannot switch to")

    def estop(self) -> None:
        """Emergency stop. Drivers with a hardware stop override this; the default holds."""
        self.hold()

    def clear_error(self) -> None:
        """Acknowledge a fault or e-stop on the controller, if it needs that."""

    def close(self) -> None:
        """Release the arm (after ``hold``)."""
