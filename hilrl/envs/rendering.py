"""Offscreen camera rendering tuned for software (llvmpipe) rendering."""

from __future__ import annotations

import mujoco
import numpy as np


class CameraRenderer:
    """Render named cameras of one model to uint8 RGB arrays of one size.

    Shadows, reflections and multisampling are off: with software rendering they cost
    about 15x in speed and add nothing a policy needs.
    """

    def __init__(self, model: mujoco.MjModel, width: int, height: int) -> None:
        # Offscreen buffer size and multisampling are read when the GL context is made.
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
        model.vis.quality.offsamples = 0
        self._renderer = mujoco.Renderer(model, height=height, width=width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """Return a fresh (H, W, 3) uint8 image from ``camera`` for the kinematics in ``data``."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
