"""The robot's config file (pydantic-validated YAML) and the safety checks that use it.

The limits here are the server's, never the client's: a client may tighten
them at run time (``set_limits``) but never loosen them past the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hilrl.envs.protocol import Request
from hilrl.errors import HilrlError


class RobotConfigError(HilrlError, ValueError):
    """The robot config file is wrong; the text names the file, the field and the fix."""


class CommandRejected(HilrlError, ValueError):
    """A command that breaks a limit; the arm holds and the client gets this text as the error."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SafetyLimits(_Strict):
    """Workspace box and per-step motion limits, in the robot's base frame (metres, radians)."""

    workspace_low: tuple[float, float, float] = Field(description="lowest allowed end-effector target (x, y, z)")
    workspace_high: tuple[float, float, float] = Field(description="highest allowed end-effector target (x, y, z)")
    max_translation_per_step: float = Field(gt=0, le=0.5, description="largest change of any target coordinate in one step (m)")
    max_rotation_per_step: float = Field(0.5, gt=0, le=3.2, description="largest roll, pitch or yaw increment in one step (rad)")
    gripper_min: float = Field(-1.0, description="smallest accepted gripper command")
    gripper_max: float = Field(1.0, description="largest accepted gripper command")

    @model_validator(mode="after")
    def _ordered(self) -> "SafetyLimits":
        if not all(lo < hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high} on every axis")
        if not self.gripper_min < self.gripper_max:
            raise ValueError("gripper_min must be below gripper_max")
        return self

    def tightened(self, changes: dict[str, Any], within: "SafetyLimits") -> "SafetyLimits":
        """Return these limits with ``changes`` applied, refusing any value looser than ``within`` (the file's)."""
        merged = self.model_dump()
        for name, value in changes.items():
            if name == "workspace_low":
                value = tuple(float(v) for v in value)
                if any(new < old for new, old in zip(value, within.workspace_low)):
                    raise CommandRejected(f"workspace_low {list(value)} lies outside the configured box {list(within.workspace_low)}; limits can only be tightened")
            elif name == "workspace_high":
                value = tuple(float(v) for v in value)
                if any(new > old for new, old in zip(value, within.workspace_high)):
                    raise CommandRejected(f"workspace_high {list(value)} lies outside the configured box {list(within.workspace_high)}; limits can only be tightened")
            elif name in ("max_translation_per_step", "max_rotation_per_step", "gripper_max"):
                if value > getattr(within, name):
                    raise CommandRejected(f"{name}={value} loosens the configured {getattr(within, name)}; limits can only be tightened")
            elif name == "gripper_min" and value < within.gripper_min:
                raise CommandRejected(f"gripper_min={value} loosens the configured {within.gripper_min}; limits can only be tightened")
            merged[name] = value
        try:
            return SafetyLimits(**merged)
        except ValidationError as exc:
            raise CommandRejected(f"bad limits: {exc.errors()[0]['msg']}") from None


class SimDriverConfig(_Strict):
    """The MuJoCo reference driver: which task runs behind the server, which a client may ask for, and its keywords.

    The server starts with ``task`` built with ``env_kwargs``; a client's ``hello`` may ask for
    another task of ``tasks`` and other settings (``hardware/PROTOCOL.md``, "Choosing the task").
    """

    task: str = Field("hilrl/Reach-v0", description="gymnasium id of the hilrl arm task served at start")
    tasks: list[str] | None = Field(
        None, description="tasks a client's hello may ask for; null = every hilrl task; [ID] pins one"
    )
    env_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="task keywords (gymnasium.make) where a client's hello names none"
    )
    realtime: bool = Field(True, description="pace steps to the control rate like a real arm; false = as fast as possible")

    @model_validator(mode="after")
    def _task_allowed(self) -> "SimDriverConfig":
        if self.tasks is not None and self.task not in self.tasks:
            raise ValueError(f"sim.task {self.task!r} is not in sim.tasks {self.tasks}; add it or pick one of them")
        return self


class RealArmConfig(_Strict):
    """What every real-arm driver needs: where the arm is, its start pose, and the action scaling."""

    host: str = Field(description="robot controller IP, e.g. 172.16.0.2")
    home_joints: list[float] = Field(min_length=6, max_length=7, description="joint angles of the start pose (rad)")
    action_scale: float = Field(0.02, gt=0, le=0.1, description="metres per unit of translation action (reported to clients)")
    rotation_scale: float = Field(0.1, gt=0, le=0.5, description="radians per unit of rotation action")
    use_rotation: bool = Field(False, description="clients send 6-number deltas (xyz + rpy)")


class FrankaDriverConfig(RealArmConfig):
    dynamics_factor: float = Field(0.1, gt=0, le=1, description="franky relative_dynamics_factor (velocity/acceleration/jerk share)")
    gripper_speed: float = Field(0.05, gt=0, le=0.2, description="finger speed (m/s)")


class URDriverConfig(RealArmConfig):
    servo_speed: float = Field(0.25, gt=0, le=1.0, description="servoL speed (m/s)")
    servo_acceleration: float = Field(0.5, gt=0, le=2.0, description="servoL acceleration (m/s^2)")
    servo_lookahead_s: float = Field(0.1, ge=0.03, le=0.2, description="servoL lookahead time (s)")
    servo_gain: float = Field(300.0, ge=100, le=2000, description="servoL proportional gain")


class RobotConfig(_Strict):
    """Everything in ``hardware/configs/NAME.yaml``."""

    driver: Literal["sim", "kinematic", "franka", "ur"] = "sim"
    control_hz: float = Field(10.0, gt=0, le=1000, description="policy/command rate; also the state stream rate")
    watchdog_timeout_s: float = Field(0.2, gt=0, le=10, description="hold the arm when no valid command arrives this long during motion")
    max_message_bytes: int = Field(65536, ge=256, le=1 << 24, description="bigger requests are refused")
    limits: SafetyLimits
    sim: SimDriverConfig = Field(default_factory=SimDriverConfig)
    franka: FrankaDriverConfig | None = None
    ur: URDriverConfig | None = None


def load_config(path: str | Path) -> RobotConfig:
    """Read and validate a robot config; raise :class:`RobotConfigError` naming the file and field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RobotConfigError(f"robot config {path} not found; pass --config hardware/configs/NAME.yaml") from None
    except yaml.YAMLError as exc:
        raise RobotConfigError(f"robot config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RobotConfigError(f"robot config {path} must be a YAML mapping of fields")
    try:
        return RobotConfig(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise RobotConfigError(f"robot config {path}: field {field!r}: {first['msg']} (input {first.get('input')!r})") from None


# Clipping into the box can add a rounding error to a delta that was exactly at the limit.
_ROUNDING_M = 1e-9


def safe_target(request: Request, ee_pos: np.ndarray, limits: SafetyLimits) -> tuple[np.ndarray, np.ndarray, bool]:
    """Turn a validated ``step`` into ``(target, delta, clipped)`` inside the limits, or raise CommandRejected.

    The target is clipped into the workspace box; a move larger than the
    per-step limit (on any axis) is refused rather than shortened, because a
    jump that big is a client bug, not a wish. ``delta`` is ``target - ee_pos``, except
    that an unclipped delta command keeps the client's exact numbers.
    """
    # Plain floats: for three numbers this is several times faster than numpy, and it runs every step.
    ee = ee_pos.tolist()
    step = request.delta[:3].tolist() if request.delta is not None else None
    requested = [e + d for e, d in zip(ee, step)] if step is not None else request.target.tolist()
    target = [min(max(v, lo), hi) for v, lo, hi in zip(requested, limits.workspace_low, limits.workspace_high)]
    clipped = target != requested
    delta = step if step is not None and not clipped else [t - e for t, e in zip(target, ee)]
    jump = max(abs(d) for d in delta)
    if jump > limits.max_translation_per_step + _ROUNDING_M:
        raise CommandRejected(
            f"step moves the target {jump:.4f} m, over max_translation_per_step={limits.max_translation_per_step} m; send smaller steps"
        )
    if request.delta is not None and request.delta.shape[0] == 6:
        turn = max(abs(r) for r in request.delta[3:].tolist())
        if turn > limits.max_rotation_per_step:
            raise CommandRejected(
                f"step rotates {turn:.4f} rad, over max_rotation_per_step={limits.max_rotation_per_step} rad; send smaller steps"
            )
    if not limits.gripper_min <= request.gripper <= limits.gripper_max:
        raise CommandRejected(f"gripper={request.gripper} outside [{limits.gripper_min}, {limits.gripper_max}]")
    return np.array(target), np.array(delta), clipped
