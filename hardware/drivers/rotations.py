"""Quaternion helpers for the real-arm drivers (w, x, y, z order; unit quaternions)."""

from __future__ import annotations

import math

import numpy as np


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_from_euler_xyz(rpy: np.ndarray) -> np.ndarray:
    """Rotation about x, then the new y, then the new z (intrinsic x-y-z, MuJoCo's ``"xyz"``)."""
    result = np.array([1.0, 0.0, 0.0, 0.0])
    for axis, angle in enumerate(rpy):
        half = np.zeros(4)
        half[0] = math.cos(angle / 2.0)
        half[1 + axis] = math.sin(angle / 2.0)
        result = quat_multiply(result, half)
    return result


def quat_from_axis_angle(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return np.concatenate([[math.cos(angle / 2.0)], np.asarray(rotvec) / angle * math.sin(angle / 2.0)])


def axis_angle_from_quat(quat: np.ndarray) -> np.ndarray:
    w, xyz = quat[0], np.asarray(quat[1:])
    if w < 0:  # the short way round
        w, xyz = -w, -xyz
    sin_half = float(np.linalg.norm(xyz))
    if sin_half < 1e-12:
        return np.zeros(3)
    return xyz / sin_half * 2.0 * math.atan2(sin_half, w)


def rotate_by_rpy(quat: np.ndarray, rpy: np.ndarray) -> np.ndarray:
    """Apply an rpy increment to an orientation the way the sim tasks do: ``delta * current``."""
    target = quat_multiply(quat_from_euler_xyz(rpy), quat)
    return target / np.linalg.norm(target)
