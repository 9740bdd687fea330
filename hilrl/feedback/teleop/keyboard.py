"""Keyboard teleop through pynput's global listener (``pip install 'hilrl[teleop]'``).

Default key map. Directions are in the robot base frame for an operator standing
behind the robot and looking along its +x, so the default :class:`FrameMap` is the identity:

=================  =========================================
``w`` / ``s``      +x / -x (forward / back)
``a`` / ``d``      +y / -y (left / right)
``r`` / ``f``      +z / -z (up / down)
``u`` / ``o``      roll + / - (about x; only with ``use_rotation``)
``i`` / ``k``      pitch + / - (about y)
``j`` / ``l``      yaw + / - (about z)
``q`` / ``e``      close / open the gripper (latched until the other key)
space (held)       intervene
enter              success (ends the episode)
backspace          failure (ends the episode)
``\\``              re-record (discards the episode in progress)
=================  =========================================

A held key moves its axis at ``key_speed`` (1.0 = one ``action_scale`` per step);
opposite keys cancel. Key handling (:meth:`KeyboardDevice.press` / :meth:`release`,
with plain key names) does not depend on pynput, which only feeds it; pynput needs
an X display (``DISPLAY``) or root for its uinput backend (``PYNPUT_BACKEND=uinput``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hilrl.feedback.teleop.base import (
    ACTIONS,
    ControlState,
    FrameMap,
    TeleopCommand,
    TeleopDevice,
    TeleopError,
    missing_package,
    register_device,
)

# key name -> (delta index, sign); indices 0-2 translation xyz, 3-5 rotation xyz
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),
    "a": (1, 1.0), "d": (1, -1.0),
    "r": (2, 1.0), "f": (2, -1.0),
    "u": (3, 1.0), "o": (3, -1.0),
    "i": (4, 1.0), "k": (4, -1.0),
    "j": (5, 1.0), "l": (5, -1.0),
}
ACTION_KEYS: dict[str, str] = {
    "q": "close", "e": "open",
    "space": "intervene", "enter": "success", "backspace": "failure", "\\": "rerecord",
}


def key_name(key: Any) -> str | None:
    """pynput ``KeyCode``/``Key`` (or anything with ``char``/``name``) -> lower-case key name."""
    char = getattr(key, "char", None)
    if char:
        return str(char).lower()
    name = getattr(key, "name", None)
    return str(name).lower() if name else None


@register_device("keyboard")
class KeyboardDevice(TeleopDevice):
    """Keys held now -> delta; keys bound to actions -> gripper latch and buttons.

    Args:
        motion_keys: key name -> (delta index 0-5, sign); default :data:`MOTION_KEYS`.
        action_keys: key name -> one of ``close, open, intervene, success, failure, rerecord``;
            default :data:`ACTION_KEYS`.
        key_speed: magnitude of a held key's axis, in (0, 1].
        frame_map: device -> action frame; default identity (the key map is already in the base frame).
        listen: start pynput's keyboard listener; ``False`` to feed :meth:`press`/:meth:`release` yourself.
    """

    name = "keyboard"

    def __init__(
        self,
        motion_keys: Mapping[str, tuple[int, float]] | None = None,
        action_keys: Mapping[str, str] | None = None,
        key_speed: float = 1.0,
        frame_map: FrameMap | None = None,
        listen: bool = True,
    ) -> None:
        self.motion_keys = dict(MOTION_KEYS if motion_keys is None else motion_keys)
        self.action_keys = dict(ACTION_KEYS if action_keys is None else action_keys)
        for key, (index, sign) in self.motion_keys.items():
            if index not in range(6) or sign not in (-1.0, 1.0):
                raise TeleopError(f"motion key {key!r}: (index, sign) must be index 0-5 and sign +1/-1, got {(index, sign)}")
        for key, action in self.action_keys.items():
            if action not in ACTIONS:
                raise TeleopError(f"action key {key!r} -> {action!r}: allowed actions are {', '.join(ACTIONS)}")
        clash = set(self.motion_keys) & set(self.action_keys)
        if clash:
            raise TeleopError(f"keys {sorted(clash)} are bound both to motion and to an action; bind each key once")
        if not 0.0 < key_speed <= 1.0:
            raise TeleopError(f"key_speed must be in (0, 1], got {key_speed}")
        self.key_speed = float(key_speed)
        self.frame_map = frame_map or FrameMap()
        self._state = ControlState()
        self._held_keys: set[str] = set()
        self._listener: Any = None
        if listen:
            self._listener = self._start_listener()

    def _start_listener(self) -> Any:
        try:
            from pynput import keyboard
        except ModuleNotFoundError as error:
            raise missing_package("pynput", "keyboard", error) from error
        except ImportError as error:  # pynput imports but finds no backend: no X display, no uinput access
            raise TeleopError(
                f"the keyboard device cannot listen to keys here: {str(error).splitlines()[0]}. It needs an X "
                "display (set DISPLAY, e.g. run in the desktop session) or root for pynput's uinput backend "
                "(PYNPUT_BACKEND=uinput); or use --device gamepad / spacemouse."
            ) from error
        listener = keyboard.Listener(on_press=self.on_press, on_release=self.on_release)
        listener.start()
        return listener

    # pynput callbacks (run on the listener's thread)
    def on_press(self, key: Any) -> None:
        name = key_name(key)
        if name is not None:
            self.press(name)

    def on_release(self, key: Any) -> None:
        name = key_name(key)
        if name is not None:
            self.release(name)

    # listener-independent key handling
    def press(self, name: str) -> None:
        """Key ``name`` went down (unbound keys are ignored)."""
        name = name.lower()
        if name in self.motion_keys:
            self._held_keys.add(name)
        elif name in self.action_keys:
            self._state.press(self.action_keys[name])

    def release(self, name: str) -> None:
        name = name.lower()
        self._held_keys.discard(name)
        if name in self.action_keys:
            self._state.release(self.action_keys[name])

    def read(self) -> TeleopCommand:
        delta = np.zeros(6, dtype=np.float32)
        for name in tuple(self._held_keys):  # a copy: the listener thread may change the set
            index, sign = self.motion_keys[name]
            delta[index] += sign * self.key_speed
        return self._state.command(delta)

    def reset(self) -> None:
        self._state.new_episode()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
