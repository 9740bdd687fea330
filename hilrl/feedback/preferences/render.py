"""Videos of stored segments: restore each MuJoCo state offscreen, render, encode as WebM (VP8).

A segment keeps the MuJoCo state before each of its steps (``ArmEnv.get_state``); setting them
back (``set_state``) reproduces the frames exactly, so nothing is rendered while the robot trains.
Frames are small (``size`` px) and rendered without shadows or reflections (software rendering,
:class:`hilrl.envs.rendering.CameraRenderer`). Chromium plays VP8 WebM; H.264 mp4 it may not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.errors import HilrlError


class SegmentRenderer:
    """Renders segments of one task.

    :param env_config: the run's :class:`hilrl.config.EnvConfig` (its task and settings).
    :param size: frame width and height in pixels.
    """

    def __init__(self, env_config: Any, size: int = 128) -> None:
        import gymnasium as gym

        import hilrl.envs  # noqa: F401  (registers the tasks)

        if getattr(env_config, "foreign", False):  # any gymnasium env: its adapter restores MuJoCo states
            from hilrl.envs.make import make_env

            self.env = make_env(env_config, render_mode="rgb_array")  # (frames at the env's own size)
            self.env.reset(seed=0)  # gymnasium renders only after a reset
            if not callable(getattr(self.env.unwrapped, "set_state", None)):
                self.env.close()
                raise HilrlError(f"{env_config.id} is not a MuJoCo env: its segments hold no states to render; "
                                 "label such runs from their videos, or use a MuJoCo env")
        else:
            kwargs = env_config.make_kwargs()
            kwargs["cameras"] = ()
            self.env = gym.make(env_config.id, **kwargs, render_size=size, render_mode="rgb_array")
        self.arm = self.env.unwrapped

    def frames(self, states: np.ndarray) -> np.ndarray:
        """``(L, size, size, 3)`` uint8 frames of the front camera at each state."""
        out = []
        for state in states:
            self.arm.set_state(state)
            out.append(self.arm.render())
        return np.stack(out)

    def close(self) -> None:
        self.env.close()


def write_webm(frames: np.ndarray, path: str | os.PathLike, fps: float = 10.0) -> Path:
    """Encode ``frames`` as VP8 WebM at ``path`` (written to a temp file, then renamed)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".webm", dir=path.parent)
    os.close(fd)
    try:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libvpx", macro_block_size=1,
                                    output_params=["-b:v", "400k", "-deadline", "realtime", "-cpu-used", "8",
                                                   "-auto-alt-ref", "0"])
        for frame in frames:
            writer.append_data(np.asarray(frame, np.uint8))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not path.stat().st_size:
        raise HilrlError(f"encoding {path} produced an empty file; check imageio-ffmpeg's libvpx")
    return path
