"""A fixed, deterministic visual feature of an object: a crop of the front camera image around it.

DROC (Zha et al. 2023, Stanford-ILIAD/droc) picks among retrieved knowledge by visual similarity of the
objects (CLIP, then DINO features of a crop). Offline and dependency-free here: the crop spans a fixed
metric window (``half_extent`` metres each side of the object's centre, projected through the camera),
is split into what stands out of its background (the border's median colour) and the rest, and the
feature is that silhouette's apparent height and width plus its mean colour (:func:`crop_feature`);
:func:`similarity` is minus the Euclidean distance. A raster of the silhouette compared by cosine was
tried first: two blocks of 12 and 16 cm at one place scored closer than one block at two places. The
feature sees size and colour, which tells a 12 cm block from a 16 cm one; it is not a semantic embedding
(two mugs of different colours differ), and anything else inside the window (a goal marker) adds to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

__all__ = ["PinholeCamera", "crop_feature", "object_crop", "scene_feature", "similarity", "visual_feature"]


@dataclass(frozen=True)
class PinholeCamera:
    """A camera's pose and vertical field of view (MuJoCo convention: looks along its -z, y up).

    Args:
        position: camera centre in the world (m).
        rotation: 3x3, camera axes as columns, in the world frame.
        fovy_deg: vertical field of view (degrees).
    """

    position: np.ndarray
    rotation: np.ndarray
    fovy_deg: float

    @classmethod
    def from_model(cls, model: mujoco.MjModel, data: mujoco.MjData, name: str = "front") -> PinholeCamera:
        cam = model.camera(name).id
        return cls(data.cam_xpos[cam].copy(), data.cam_xmat[cam].reshape(3, 3).copy(), float(model.cam_fovy[cam]))

    @classmethod
    def for_task(cls, task_name: str, name: str = "front") -> PinholeCamera:
        """The camera of a hilrl task's scene (what the robot server's MuJoCo driver renders too)."""
        from hilrl.envs import TASKS
        from hilrl.envs.arm_env import ASSETS

        model = mujoco.MjModel.from_xml_path(str(ASSETS / TASKS[task_name].xml_file))
        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        return cls.from_model(model, data, name)

    def project(self, point: np.ndarray, size: int) -> tuple[float, float, float]:
        """Pixel column, row and depth (m) of a world point in a ``size`` x ``size`` image."""
        local = self.rotation.T @ (np.asarray(point, np.float64) - self.position)
        depth = -float(local[2])
        focal = (size / 2) / np.tan(np.deg2rad(self.fovy_deg) / 2)
        return size / 2 + focal * local[0] / depth, size / 2 - focal * local[1] / depth, depth


def object_crop(image: np.ndarray, camera: PinholeCamera, point: np.ndarray, half_extent: float = 0.1) -> np.ndarray:
    """The square of ``image`` covering ``half_extent`` metres each side of ``point`` (edge pixels repeated)."""
    size = image.shape[0]
    col, row, depth = camera.project(point, size)
    focal = (size / 2) / np.tan(np.deg2rad(camera.fovy_deg) / 2)
    half = max(2, int(round(focal * half_extent / depth)))
    rows = np.clip(np.arange(int(row) - half, int(row) + half), 0, size - 1)
    cols = np.clip(np.arange(int(col) - half, int(col) + half), 0, image.shape[1] - 1)
    return image[np.ix_(rows, cols)]


def crop_feature(crop: np.ndarray) -> np.ndarray:
    """Size and colour of what stands out of the crop's background: ``[height, width, r, g, b]`` (float32).

    The background is the median colour of the crop's border; a pixel further than 0.15 (RGB in [0, 1])
    from it is foreground. ``height`` and ``width`` are the shares of the crop's rows and columns that hold
    foreground (the crop spans a fixed metric window, so they measure the object's apparent size);
    ``r, g, b`` the mean foreground colour.
    """
    pixels = crop.astype(np.float64) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    foreground = np.linalg.norm(pixels - np.median(border, axis=0), axis=-1) > 0.15
    height = float(foreground.any(axis=1).mean())
    width = float(foreground.any(axis=0).mean())
    colour = pixels[foreground].mean(axis=0) if foreground.any() else np.zeros(3)
    return np.array([height, width, *colour], dtype=np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two features are: minus their Euclidean distance (0 for the same picture)."""
    return -float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def visual_feature(image: np.ndarray, camera: PinholeCamera, point: np.ndarray) -> np.ndarray:
    """The feature of the object at ``point`` in ``image``."""
    return crop_feature(object_crop(image, camera, point))


def scene_feature(image: np.ndarray) -> np.ndarray:
    """The feature of the whole image (a plan-level constraint's scene)."""
    return crop_feature(image)
