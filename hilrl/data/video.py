"""mp4 writing through imageio-ffmpeg."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class VideoWriter:
    """Streams rgb frames to an mp4 (H.264), so long runs never hold every frame in memory."""

    def __init__(self, path: str | os.PathLike, fps: float = 10.0):
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # macro_block_size=1 keeps odd sizes as they are instead of resizing with a warning
        self._writer = imageio.get_writer(self.path, fps=fps, codec="libx264", macro_block_size=1, quality=7)
        self.frames = 0

    def __call__(self, frame: np.ndarray) -> None:
        self._writer.append_data(np.asarray(frame, dtype=np.uint8))
        self.frames += 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
