"""Gamepad teleop through pygame's joystick events (``pip install 'hilrl[teleop]'``).

Device frame (default :data:`GamepadLayout`, an Xbox-style pad under SDL2 on Linux):
x right, y towards the operator, z down, like the SpaceMouse, so the default
:class:`FrameMap` is :data:`SCREEN_TO_BASE` (operator behind the robot):

=======================  =================================================
left stick               x / y: right = base -y, up = base +x
right stick up / down    base +z / -z
right stick left / right yaw: right turns the tool clockwise seen from above
d-pad                    right = roll + (about base x), up = pitch + (about base y)
X (held)                 intervene
A / B                    success / failure (end the episode)
Y                        re-record (discard the episode in progress)
LB / RB                  open / close the gripper (latched)
=======================  =================================================

Events are handled by :meth:`GamepadDevice.handle_event`; :meth:`read` pumps
pygame's queue into it, so tests can ``pygame.event.post`` synthetic events.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hilrl.feedback.teleop.base import (
    ACTIONS,
    SCREEN_TO_BASE,
    ControlState,
    FrameMap,
    TeleopCommand,
    TeleopDevice,
    TeleopError,
    missing_package,
    register_device,
)


@dataclass(frozen=True)
class GamepadLayout:
    """Which joystick axis and button does what (indices as pygame reports them)."""

    left_x: int = 0
    left_y: int = 1
    right_x: int = 3
    right_y: int = 4
    hat: int = 0
    buttons: Mapping[int, str] = field(default_factory=lambda: {
        0: "success", 1: "failure", 2: "intervene", 3: "rerecord", 4: "open", 5: "close",
    })

    def __post_init__(self) -> None:
        for index, action in self.buttons.items():
            if action not in ACTIONS:
                raise TeleopError(f"gamepad button {index} -> {action!r}: allowed actions are {', '.join(ACTIONS)}")


@register_device("gamepad")
class GamepadDevice(TeleopDevice):
    """A pygame joystick; sticks within ``stick_dead_zone`` of centre read 0 (sticks drift).

    Args:
        joystick: pygame joystick index to open.
        layout: axis and button assignment.
        stick_dead_zone: per-axis dead-zone against stick drift, in [0, 1).
        frame_map: device -> action frame; default :data:`SCREEN_TO_BASE`.
        open_device: open joystick ``joystick``; ``False`` only initialises pygame's event
            queue and accepts events from any joystick (tests post events themselves).
    """

    name = "gamepad"

    def __init__(
        self,
        joystick: int = 0,
        layout: GamepadLayout | None = None,
        stick_dead_zone: float = 0.1,
        frame_map: FrameMap | None = None,
        open_device: bool = True,
    ) -> None:
        if not 0.0 <= stick_dead_zone < 1.0:
            raise TeleopError(f"stick_dead_zone must be in [0, 1), got {stick_dead_zone}")
        self.layout = layout or GamepadLayout()
        self.stick_dead_zone = float(stick_dead_zone)
        self.frame_map = frame_map or SCREEN_TO_BASE
        self._state = ControlState()
        self._axes: dict[int, float] = {}
        self._hat = (0, 0)
        # no window is needed, but pygame's event queue lives in its video subsystem
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as error:
            raise missing_package("pygame", "gamepad", error) from error
        self._pygame = pygame
        pygame.display.init()
        pygame.joystick.init()
        self._joystick: Any = None
        self._instance_id: int | None = None
        if open_device:
            count = pygame.joystick.get_count()
            if not 0 <= joystick < count:
                raise TeleopError(
                    f"gamepad {joystick} not found: pygame sees {count} joystick(s). Plug the gamepad in "
                    "(check it appears in /dev/input/js*) or choose another index."
                )
            self._joystick = pygame.joystick.Joystick(joystick)
            self._joystick.init()
            self._instance_id = self._joystick.get_instance_id()
        self._types = (pygame.JOYAXISMOTION, pygame.JOYHATMOTION, pygame.JOYBUTTONDOWN, pygame.JOYBUTTONUP)

    def handle_event(self, event: Any) -> None:
        """Apply one pygame joystick event (others, and other joysticks' events, are ignored)."""
        pg = self._pygame
        if self._instance_id is not None and getattr(event, "instance_id", self._instance_id) != self._instance_id:
            return
        if event.type == pg.JOYAXISMOTION:
            self._axes[int(event.axis)] = float(event.value)
        elif event.type == pg.JOYHATMOTION and int(event.hat) == self.layout.hat:
            self._hat = (int(event.value[0]), int(event.value[1]))
        elif event.type in (pg.JOYBUTTONDOWN, pg.JOYBUTTONUP):
            action = self.layout.buttons.get(int(event.button))
            if action is not None:
                (self._state.press if event.type == pg.JOYBUTTONDOWN else self._state.release)(action)

    def _axis(self, index: int) -> float:
        value = self._axes.get(index, 0.0)
        return 0.0 if abs(value) < self.stick_dead_zone else value

    def read(self) -> TeleopCommand:
        for event in self._pygame.event.get(self._types):
            self.handle_event(event)
        lay = self.layout
        hat_x, hat_y = self._hat
        delta = np.array([
            self._axis(lay.left_x), self._axis(lay.left_y), self._axis(lay.right_y),
            -hat_y, -hat_x, self._axis(lay.right_x),
        ], dtype=np.float32)
        return self._state.command(delta)

    def reset(self) -> None:
        self._state.new_episode()

    def close(self) -> None:
        if self._joystick is not None:
            self._joystick.quit()
            self._joystick = None
