"""Shared reset randomisation helpers for the tasks (object placement, goal sampling)."""

from __future__ import annotations

import numpy as np

# Region of the table where objects start (m, world frame), inside the arm's workspace.
OBJECT_LOW = np.array([0.4, -0.15])
OBJECT_HIGH = np.array([0.6, 0.15])
GOAL_LOW = np.array([0.35, -0.22])
GOAL_HIGH = np.array([0.65, 0.22])
MAX_YAW = 0.25  # rad; keeps cube faces roughly parallel to the fingers (no rotation control by default)


def place_cube(env, qadr: int, half: float = 0.025) -> np.ndarray:
    """Put a free-joint cube at a random xy and small random yaw on the table; return its xy."""
    rng = env.np_random
    xy = rng.uniform(OBJECT_LOW, OBJECT_HIGH)
    yaw = rng.uniform(-MAX_YAW, MAX_YAW)
    env.data.qpos[qadr : qadr + 3] = (xy[0], xy[1], half)
    env.data.qpos[qadr + 3 : qadr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
    return xy


def sample_goal_near(rng: np.random.Generator, xy: np.ndarray, min_dist: float, max_dist: float) -> np.ndarray:
    """A goal in the goal region at a distance in [min_dist, max_dist] from ``xy``."""
    for _ in range(1000):
        angle = rng.uniform(-np.pi, np.pi)
        dist = rng.uniform(min_dist, max_dist)
        goal = xy + dist * np.array([np.cos(angle), np.sin(angle)])
        if np.all(goal >= GOAL_LOW) and np.all(goal <= GOAL_HIGH):
            return goal
    raise RuntimeError("could not sample a goal in the goal region; widen GOAL_LOW/GOAL_HIGH.")
