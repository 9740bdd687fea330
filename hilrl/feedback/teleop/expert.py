"""The scripted expert as a teleop device, so every path a person can drive can also run unattended."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hilrl.feedback.teleop.base import FrameMap, TeleopCommand, TeleopDevice, TeleopError, register_device

Obs = dict[str, np.ndarray]


@register_device("expert", human=False)
class ExpertDevice(TeleopDevice):
    """Reports the expert's action for the last observed state as a device reading.

    The expert's action is already in the action frame, so the frame map is the identity
    and ``FrameMap.to_action`` gives back exactly the expert's action. It presses no buttons.

    Args:
        expert: ``expert(obs) -> action`` of size 4 or 7 (e.g. :func:`hilrl.feedback.make_expert`).
    """

    name = "expert"

    def __init__(self, expert: Callable[[Obs], np.ndarray]) -> None:
        self.expert = expert
        self.frame_map = FrameMap()
        self._obs: Obs | None = None

    def observe(self, obs: Obs) -> None:
        self._obs = obs

    def read(self) -> TeleopCommand:
        if self._obs is None:
            raise TeleopError("ExpertDevice.read() before observe(obs): the expert needs the observation")
        action = np.asarray(self.expert(self._obs), dtype=np.float32)
        if action.shape not in ((4,), (7,)):
            raise TeleopError(f"the expert returned an action of shape {action.shape}; expected (4,) or (7,)")
        delta = np.zeros(6, dtype=np.float32)
        delta[: action.size - 1] = action[:-1]
        return TeleopCommand(delta, float(action[-1]))

    def reset(self) -> None:
        self._obs = None
        reset = getattr(self.expert, "reset", None)
        if reset is not None:
            reset()
