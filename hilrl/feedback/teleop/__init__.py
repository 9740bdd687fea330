"""Teleop devices (keyboard, gamepad, SpaceMouse, the scripted expert) and their intervention source.

Each hardware backend imports its package lazily (extra ``hilrl[teleop]``), so importing
this package needs none of them. Devices are registered by name in :data:`TELEOP_DEVICES` (a
:class:`hilrl.plugins.Registry`) with :func:`register_device` next to their class; importing this package
registers the built-in ones, and a plugin's device (entry-point group ``hilrl.plugins``, or a file in the
config's ``plugins:`` list) joins them the same way.
"""

from __future__ import annotations

from hilrl.feedback.teleop.base import (
    BUTTONS,
    SCREEN_TO_BASE,
    TELEOP_DEVICES,
    FrameMap,
    TeleopCommand,
    TeleopDevice,
    TeleopError,
    human_device_names,
    make_device,
    register_device,
)
from hilrl.feedback.teleop.episode import teleop_episode

# the built-in devices register on import, in the order they are listed to users
from hilrl.feedback.teleop.keyboard import KeyboardDevice  # isort: skip
from hilrl.feedback.teleop.gamepad import GamepadDevice  # isort: skip
from hilrl.feedback.teleop.spacemouse import SpaceMouseDevice  # isort: skip
from hilrl.feedback.teleop.expert import ExpertDevice  # isort: skip
from hilrl.feedback.teleop.takeover import DEFAULT_DEAD_ZONE, DeviceInterventionist


__all__ = [
    "BUTTONS", "DEFAULT_DEAD_ZONE", "SCREEN_TO_BASE", "TELEOP_DEVICES", "DeviceInterventionist",
    "ExpertDevice", "FrameMap", "GamepadDevice", "KeyboardDevice", "SpaceMouseDevice", "TeleopCommand",
    "TeleopDevice", "TeleopError", "human_device_names", "make_device", "register_device", "teleop_episode",
]
