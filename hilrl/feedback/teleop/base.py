"""What every teleop device returns, and how its axes become an action of the arm.

A device is read once per control step (:meth:`TeleopDevice.read`, non-blocking,
latest state) and answers a :class:`TeleopCommand`:

* ``delta`` (6,) in [-1, 1]: translation xyz and rotation about xyz, in the
  *device's* own frame (each backend documents its frame);
* ``gripper``: the absolute gripper command the person last gave this episode
  (-1 closed, +1 open), or ``None`` when they have not touched the gripper;
* ``buttons``: names from :data:`BUTTONS`. ``intervene`` is reported while held;
  ``success``, ``failure`` and ``rerecord`` are events, reported once by the first
  read after the press, so a press between two reads is never lost.

A :class:`FrameMap` turns the device frame into the policy's action frame (the
robot base frame of ``hilrl.envs.arm_env``: x forward, y left, z up; rotations
are applied in that frame too).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hilrl.errors import HilrlError
from hilrl.plugins import Registry

BUTTONS = ("intervene", "success", "failure", "rerecord")
EPISODE_EVENTS = ("success", "failure", "rerecord")
# What a key or button of any backend can be bound to, besides a motion axis.
ACTIONS = ("close", "open", *BUTTONS)


class TeleopError(HilrlError):
    """A teleop device cannot be opened or was configured wrongly; the message says how to fix it."""


def missing_package(package: str, device: str, error: Exception) -> TeleopError:
    """The one error for a backend whose optional package is not installed."""
    return TeleopError(
        f"the {device} device needs the {package!r} package, which could not be imported ({error}). "
        "Install the teleop extra: pip install 'hilrl[teleop]'"
    )


@dataclass(frozen=True)
class TeleopCommand:
    """One reading of a device: a 6-D delta in the device frame, a gripper command and buttons."""

    delta: np.ndarray = field(default_factory=lambda: np.zeros(6, dtype=np.float32))
    gripper: float | None = None
    buttons: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        delta = np.asarray(self.delta, dtype=np.float32)
        if delta.shape != (6,):
            raise TeleopError(f"TeleopCommand.delta must have shape (6,) (xyz, rotation xyz), got {delta.shape}")
        unknown = set(self.buttons) - set(BUTTONS)
        if unknown:
            raise TeleopError(f"unknown teleop buttons {sorted(unknown)}; allowed: {', '.join(BUTTONS)}")
        object.__setattr__(self, "delta", np.clip(delta, -1.0, 1.0))


_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class FrameMap:
    """Device frame -> action frame: ``action = clip(gain * R @ delta)``, for translation and rotation.

    Args:
        rotation: 3x3 orthogonal matrix, base axes from device axes (row i says which
            device axes make base axis i). A reflection (det -1) is allowed; the rotation
            part is then multiplied by det(R), because rotation vectors are pseudo-vectors.
        translation_gain: multiplies the translation part (1.0 = full device range is one
            ``action_scale`` step).
        rotation_gain: multiplies the rotation part.
    """

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation_gain: float = 1.0
    rotation_gain: float = 1.0

    def __post_init__(self) -> None:
        r = np.asarray(self.rotation, dtype=np.float64)
        if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-6):
            raise TeleopError(f"FrameMap.rotation must be a 3x3 orthogonal matrix (R @ R.T = I), got {r.tolist()}")
        for name in ("translation_gain", "rotation_gain"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise TeleopError(f"FrameMap.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        object.__setattr__(self, "rotation", r)

    @classmethod
    def from_axes(cls, axes: Iterable[str], translation_gain: float = 1.0, rotation_gain: float = 1.0) -> FrameMap:
        """Signed axis permutation: ``from_axes(("-y", "-x", "-z"))`` means base x = -device y, and so on."""
        names = [str(a).strip().lower() for a in axes]
        r = np.zeros((3, 3))
        for i, name in enumerate(names):
            sign, axis = (-1.0, name[1:]) if name.startswith("-") else (1.0, name.lstrip("+"))
            if axis not in _AXES:
                raise TeleopError(f"FrameMap.from_axes: {name!r} is not an axis; use three of x, y, z with an optional '-'")
            r[i, _AXES[axis]] = sign
        if len(names) != 3 or abs(abs(np.linalg.det(r)) - 1.0) > 1e-9:
            raise TeleopError(f"FrameMap.from_axes needs each of x, y, z exactly once, got {names}")
        return cls(r, translation_gain, rotation_gain)

    def to_action(self, command: TeleopCommand, action_dim: int, gripper: float) -> np.ndarray:
        """The arm action ``[dx, dy, dz, (droll, dpitch, dyaw,) gripper]`` for ``command``.

        ``gripper`` is used when the command leaves the gripper unchanged (``None``).
        """
        if action_dim not in (4, 7):
            raise TeleopError(f"teleop drives arm actions of size 4 or 7 (with rotation), got {action_dim}")
        action = np.empty(action_dim, dtype=np.float32)
        action[:3] = self.translation_gain * (self.rotation @ command.delta[:3])
        if action_dim == 7:
            handedness = float(np.sign(np.linalg.det(self.rotation)))
            action[3:6] = self.rotation_gain * handedness * (self.rotation @ command.delta[3:])
        action[-1] = gripper if command.gripper is None else command.gripper
        return np.clip(action, -1.0, 1.0)


# Devices whose frame is x right, y towards the operator, z down (the SpaceMouse's HID frame, and
# the gamepad frame below), seen by an operator standing behind the robot and facing along its +x.
SCREEN_TO_BASE = FrameMap.from_axes(("-y", "-x", "-z"))


class ControlState:
    """Thread-safe gripper latch, held buttons and one-shot events; shared by the backends.

    Backends whose events arrive on another thread (pynput's listener) call
    :meth:`press`/:meth:`release` from there and :meth:`command` from the control loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gripper: float | None = None
        self._held: set[str] = set()
        self._events: set[str] = set()

    def press(self, action: str) -> None:
        if action not in ACTIONS:
            raise TeleopError(f"unknown teleop action {action!r}; allowed: {', '.join(ACTIONS)}")
        with self._lock:
            if action == "close":
                self._gripper = -1.0
            elif action == "open":
                self._gripper = 1.0
            elif action == "intervene":
                self._held.add(action)
            else:
                self._events.add(action)

    def release(self, action: str) -> None:
        with self._lock:
            self._held.discard(action)

    def command(self, delta: np.ndarray) -> TeleopCommand:
        """The current state with ``delta``; the pending events are consumed."""
        with self._lock:
            buttons = frozenset(self._held | self._events)
            self._events.clear()
            gripper = self._gripper
        return TeleopCommand(np.asarray(delta, dtype=np.float32), gripper, buttons)

    def new_episode(self) -> None:
        """Forget events and the gripper latch: the arm starts each episode with the gripper open."""
        with self._lock:
            self._events.clear()
            self._gripper = None


class TeleopDevice(ABC):
    """A human (or scripted) input device. Subclasses set ``name`` and ``frame_map`` (their default).

    Use as a context manager, or call :meth:`close` to stop listener threads and release the device.
    """

    name: str = "device"
    frame_map: FrameMap = FrameMap()

    @abstractmethod
    def read(self) -> TeleopCommand:
        """The latest state of the device; never blocks."""

    def reset(self) -> None:
        """Start of an episode: drop stale events and the gripper latch."""

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Called with each observation before :meth:`read`; only scripted devices need it."""

    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> TeleopDevice:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# the device names intervention.device and `hilrl record --device` accept (a hilrl.plugins.Registry, the one
# mechanism of every door). ``human``: a person's device (False: the scripted expert, which drives itself).
TELEOP_DEVICES = Registry("teleop device", error=TeleopError, defaults={"human": True},
                          load_hint="install the teleop extra: pip install 'hilrl[teleop]'")


def register_device(name: str, human: bool = True) -> Any:
    """Register a :class:`TeleopDevice` subclass under ``name``; a class decorator. ``make_device(name, **kwargs)``
    then opens it as ``cls(**kwargs)``, and ``intervention.device: NAME`` / ``hilrl record --device NAME`` accept it
    (when ``human``). The class's ``name`` is set to ``name`` unless it sets its own."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, TeleopDevice)):
            raise TeleopError(f"register_device({name!r}) decorates a TeleopDevice subclass, got {cls!r}")
        if cls.name == TeleopDevice.name:
            cls.name = name
        return TELEOP_DEVICES.register(name, cls, human=human)

    return decorate


def human_device_names() -> tuple[str, ...]:
    """The registered devices a person holds (``intervention.device``, ``hilrl record --device``), plugins' too."""
    return tuple(TELEOP_DEVICES.names(human=True))


def make_device(name: str, **kwargs: Any) -> TeleopDevice:
    """Open the human device ``name`` (one of :func:`human_device_names`); ``kwargs`` go to its constructor."""
    return TELEOP_DEVICES.get(name, human=True)(**kwargs)
