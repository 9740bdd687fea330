"""Teleop devices (keyboard, gamepad, SpaceMouse, the scripted expert) and their intervention source.

Each hardware backend imports its package lazily (extra ``hilrl[teleop]``), so importing
this package needs none of them.
"""

from __future__ import annotations

from typing import Any

from hilrl.feedback.teleop.base import (
    BUTTONS,
    SCREEN_TO_BASE,
    FrameMap,
    TeleopCommand,
    TeleopDevice,
    TeleopError,
)
from hilrl.feedback.teleop.episode import teleop_episode
from hilrl.feedback.teleop.expert import ExpertDevice
from hilrl.feedback.teleop.takeover import DEFAULT_DEAD_ZONE, DeviceInterventionist

HUMAN_DEVICES = ("keyboard", "gamepad", "spacemouse")


def make_device(name: str, **kwargs: Any) -> TeleopDevice:
    """Open the human device ``name`` (one of :data:`HUMAN_DEVICES`); ``kwargs`` go to its constructor."""
    if name == "keyboard":
        from hilrl.feedback.teleop.keyboard import KeyboardDevice

        return KeyboardDevice(**kwargs)
    if name == "gamepad":
        from hilrl.feedback.teleop.gamepad import GamepadDevice

        return GamepadDevice(**kwargs)
    if name == "spacemouse":
        from hilrl.feedback.teleop.spacemouse import SpaceMouseDevice

        return SpaceMouseDevice(**kwargs)
    raise TeleopError(f"unknown teleop device {name!r}; allowed: {', '.join(HUMAN_DEVICES)}")


__all__ = [
    "BUTTONS", "DEFAULT_DEAD_ZONE", "HUMAN_DEVICES", "SCREEN_TO_BASE", "DeviceInterventionist", "ExpertDevice",
    "FrameMap", "TeleopCommand", "TeleopDevice", "TeleopError", "make_device", "teleop_episode",
]
