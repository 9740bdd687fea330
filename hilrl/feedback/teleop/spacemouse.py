"""3Dconnexion SpaceMouse teleop through hidapi (``pip install 'hilrl[teleop]'``, module ``hid``).

HID reports (little-endian int16, about +-350 at full deflection):

* report 1: translation x, y, z (6 bytes); newer devices (SpaceMouse Wireless,
  Pro Wireless, Enterprise) append rotation x, y, z in the same report (12 bytes);
* report 2: rotation x, y, z (older devices: SpaceNavigator, SpaceMouse Compact/Pro USB);
* report 3: button bitmask (bit 0 left, bit 1 right, then further buttons).

Device frame = the HID frame: x right, y towards the operator, z down, rotations
right-handed about those axes. The default :class:`FrameMap` is :data:`SCREEN_TO_BASE`
(operator behind the robot): pushing the cap away moves the arm forward (+x), lifting
it moves the arm up. Default buttons follow SERL: left closes, right opens the gripper.
Check the rotation signs once on your unit; remap with ``frame_map`` if a model differs.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
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

VENDOR_IDS = (0x046D, 0x256F)  # Logitech (older 3Dconnexion devices), 3Dconnexion
FULL_SCALE = 350.0
DEFAULT_BUTTONS: dict[int, str] = {0: "close", 1: "open"}


@register_device("spacemouse")
class SpaceMouseDevice(TeleopDevice):
    """Parses SpaceMouse HID reports, read on a background thread so the state is always the latest.

    Args:
        path: hidapi device path; ``None`` opens the first device of a 3Dconnexion/Logitech vendor id
            whose product string contains "Space".
        buttons: button bit -> one of ``close, open, intervene, success, failure, rerecord``.
        full_scale: raw count that maps to 1.0.
        frame_map: device -> action frame; default :data:`SCREEN_TO_BASE`.
        hid_device: an already-open object with ``read(size, timeout_ms) -> list[int]`` and
            ``close()``; ``None`` opens one with hidapi. ``False`` opens nothing: feed
            :meth:`handle_report` yourself.
    """

    name = "spacemouse"

    def __init__(
        self,
        path: bytes | None = None,
        buttons: Mapping[int, str] | None = None,
        full_scale: float = FULL_SCALE,
        frame_map: FrameMap | None = None,
        hid_device: Any = None,
    ) -> None:
        self.buttons = dict(DEFAULT_BUTTONS if buttons is None else buttons)
        for bit, action in self.buttons.items():
            if action not in ACTIONS:
                raise TeleopError(f"spacemouse button {bit} -> {action!r}: allowed actions are {', '.join(ACTIONS)}")
        if not full_scale > 0:
            raise TeleopError(f"full_scale must be > 0 (raw counts at full deflection), got {full_scale}")
        self.full_scale = float(full_scale)
        self.frame_map = frame_map or SCREEN_TO_BASE
        self._state = ControlState()
        self._lock = threading.Lock()
        self._raw = np.zeros(6, dtype=np.float32)
        self._pressed: frozenset[int] = frozenset()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._device: Any = None
        if hid_device is False:
            return
        self._device = hid_device if hid_device is not None else self._open(path)
        self._thread = threading.Thread(target=self._read_loop, name="spacemouse-reader", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(path: bytes | None) -> Any:
        try:
            import hid
        except ImportError as error:
            raise missing_package("hidapi", "spacemouse", error) from error
        if not hasattr(hid, "enumerate") or not hasattr(hid, "device"):
            raise TeleopError("the imported 'hid' module is not hidapi's (another package named 'hid' shadows it); "
                              "pip uninstall hid && pip install 'hilrl[teleop]'")
        if path is None:
            found = [d for d in hid.enumerate() if d.get("vendor_id") in VENDOR_IDS
                     and "space" in str(d.get("product_string") or "").lower()]
            if not found:
                raise TeleopError(
                    "no SpaceMouse found (no HID device from 3Dconnexion/Logitech named 'Space...'). Plug it in, and "
                    "on Linux allow access with a udev rule: KERNEL==\"hidraw*\", ATTRS{idVendor}==\"256f\", MODE=\"0666\""
                )
            path = found[0]["path"]
        device = hid.device()
        try:
            device.open_path(path)
        except OSError as error:
            raise TeleopError(f"cannot open SpaceMouse at {path!r}: {error}; check the hidraw permissions (udev rule)") from error
        return device

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._device.read(64, 50)
            except (OSError, ValueError):
                return  # unplugged or closed: the state stays at its last value and close() cleans up
            if data:
                self.handle_report(bytes(data))

    def handle_report(self, report: bytes) -> None:
        """Apply one raw HID report (first byte = report id); unknown ids are ignored."""
        if not report:
            return
        report_id = report[0]
        if report_id in (1, 2) and len(report) >= 7:
            values = np.array(struct.unpack_from("<3h", report, 1), dtype=np.float32)
            with self._lock:
                if report_id == 1:
                    self._raw[:3] = values
                    if len(report) >= 13:
                        self._raw[3:] = struct.unpack_from("<3h", report, 7)
                else:
                    self._raw[3:] = values
        elif report_id == 3 and len(report) >= 2:
            mask = int.from_bytes(report[1:], "little")
            pressed = frozenset(bit for bit in range(8 * (len(report) - 1)) if mask >> bit & 1)
            with self._lock:
                before, self._pressed = self._pressed, pressed
            for bit in pressed - before:
                if bit in self.buttons:
                    self._state.press(self.buttons[bit])
            for bit in before - pressed:
                if bit in self.buttons:
                    self._state.release(self.buttons[bit])

    def read(self) -> TeleopCommand:
        with self._lock:
            delta = self._raw / self.full_scale
        return self._state.command(delta)

    def reset(self) -> None:
        self._state.new_episode()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._device is not None:
            self._device.close()
            self._device = None
