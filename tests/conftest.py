"""Shared test set-up: offscreen rendering, one torch thread (2 cores shared by many processes)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import torch  # noqa: E402

torch.set_num_threads(1)
