"""Offscreen camera rendering tuned for software (llvmpipe) rendering."""

from __future__ import annotations

import mujoco
import numpy as np


def software_renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    """A ``mujoco.Renderer`` for software (llvmpipe) GL: shadows, reflections, skybox and multisampling off.

    With software rendering they cost about 15x in speed and add nothing a policy needs.
    """
    # Offscreen buffer size and multisampling are read when the GL context is made.
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height=height, width=width)
    flags = renderer.scene.flags
    flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
    flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
    return renderer


def use_software_renderers(owner: object) -> list[str]:
    """Replace every ``mujoco.Renderer`` ``owner`` holds as an attribute (a foreign MuJoCo env's camera renderer,
    e.g. gym-hil's ``_viewer``) by a :func:`software_renderer` of the same size; returns the attributes replaced.

    gym-hil draws its two 128 px cameras with shadows, reflections and 4x multisampling: about 6.8 s per pair
    on this project's 2-core machine under load, 0.57 s without (``MUJOCO_GL=egl``, software GL).
    """
    replaced = []
    for name, value in list(vars(owner).items()):
        if isinstance(value, mujoco.Renderer):
            fast = software_renderer(value.model, value.width, value.height)
            value.close()
            setattr(owner, name, fast)
            replaced.append(name)
    return replaced


class CameraRenderer:
    """Render named cameras of one model to uint8 RGB arrays of one size (:func:`software_renderer`)."""

    def __init__(self, model: mujoco.MjModel, width: int, height: int) -> None:
        self._renderer = software_renderer(model, width, height)

    def render(self, data: mujoco.MjData, camera: str | int) -> np.ndarray:
        """Return a fresh (H, W, 3) uint8 image from ``camera`` for the kinematics in ``data``."""
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()
