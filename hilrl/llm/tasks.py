"""The text an LLM is given about each task: its observation fields and its success condition.

Eureka's context is the environment's observation code and a task description
(eureka-research/Eureka, ``envs/*_obs.py`` and the ``description`` of each task config); here each
task's fields are stated once, as the reward code sees them (numpy arrays with a leading batch axis),
keyed by task id so the env package stays untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hilrl.errors import HilrlError

__all__ = ["TaskText", "foreign_task_text", "task_text"]

_ARM = """obs and next_obs are dicts of float32 numpy arrays with a leading batch axis N (next_obs: after the action):
  ee_pos    (N, 3)  tool centre point (between the fingertips), world frame, metres; the table top is z = 0
  ee_quat   (N, 4)  tool orientation quaternion wxyz (held pointing down)
  gripper   (N, 1)  finger opening in [0, 1] (0 closed, 1 open)
  joint_pos (N, 7)  arm joint angles (rad)
  joint_vel (N, 7)  arm joint velocities (rad/s)
{object}
action (N, 4): [dx, dy, dz, gripper] in [-1, 1]; dx, dy, dz move the tool centre point by up to 5 cm per step
(10 steps per second); gripper is absolute: -1 closed, +1 open."""


@dataclass(frozen=True)
class TaskText:
    """What the LLM reads about a task.

    Args:
        description: the goal in one sentence.
        observation: the fields of obs, next_obs and action.
        success: the success condition the search's fitness measures.
    """

    description: str
    observation: str
    success: str


TASKS: dict[str, TaskText] = {
    "hilrl/Reach-v0": TaskText(
        "Move the robot arm's tool centre point to a goal position in the air.",
        _ARM.format(object="  object    (N, 3)  goal position, world frame, metres"),
        "the tool centre point is within 2 cm of the goal (next_obs['ee_pos'] vs next_obs['object']); the episode "
        "ends on success or after 50 steps"),
    "hilrl/Push-v0": TaskText(
        "Push a 5 cm cube across the table into a goal region with the closed gripper.",
        _ARM.format(object="  object    (N, 10) [0:3] cube centre position, [3:7] cube quaternion wxyz, [7:10] goal "
                           "position on the table (z = 0), metres"),
        "the cube centre is within 3 cm of the goal in x and y and the cube is still on the table (centre z below "
        "5 cm); the episode ends on success or after 100 steps"),
    "hilrl/PickCube-v0": TaskText(
        "Grasp a 5 cm cube on the table and lift it to a goal position in the air.",
        _ARM.format(object="  object    (N, 10) [0:3] cube centre position, [3:7] cube quaternion wxyz, [7:10] goal "
                           "position in the air, metres"),
        "the cube centre is within 3 cm of the goal; the episode ends on success or after 100 steps"),
    "hilrl/PegInsert-v0": TaskText(
        "Pick up an upright 2.4 x 2.4 x 8 cm square peg and insert it into the 3.2 cm square hole of a block.",
        _ARM.format(object="  object    (N, 10) [0:3] peg centre position, [3:7] peg quaternion wxyz, [7:10] centre of "
                           "the hole's top opening, metres"),
        "the peg bottom (centre z - 4 cm) is at least 3 cm below the hole's top, the peg centre is within 1 cm of "
        "the hole axis in x and y, and the peg is tilted less than 10 degrees; ends on success or after 100 steps"),
}


def task_text(task_id: str, path: str | None = None) -> TaskText:
    """The text of ``task_id``: hilrl's own for its tasks; for any other gymnasium id (a foreign env) the
    description from ``path`` (a user's text file, ``hilrl reward-search --task-text``) or the env class's docstring, and the
    fields generated from the spaces the env adapter presents (:func:`foreign_task_text`).

    Raises:
        HilrlError: no text for that task (naming the ones there are).
    """
    if task_id in TASKS:
        own = TASKS[task_id]
        return own if path is None else TaskText(_read_text(path), own.observation, own.success)
    if task_id.startswith("hilrl/"):
        raise HilrlError(f"no LLM description for task {task_id!r}; reward search knows {', '.join(TASKS)} (add one "
                         "to hilrl.llm.tasks.TASKS)")
    return foreign_task_text(task_id, path)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise HilrlError(f"task text {str(path)!r} cannot be read ({exc}); give a text file describing the task") \
            from None


def _field(name: str, space) -> str:
    if space.dtype == np.uint8:
        return f"  {name:<20} (N, {', '.join(map(str, space.shape))}) uint8 camera image"
    low, high = float(np.min(space.low)), float(np.max(space.high))
    bounds = "" if not (np.isfinite(low) and np.isfinite(high)) else f" in [{low:g}, {high:g}]"
    return f"  {name:<20} (N, {space.shape[0]}) float32{bounds}"


def foreign_task_text(task_id: str, path: str | None = None) -> TaskText:
    """A foreign env's text, generated: observation fields and the action from the spaces the env adapter
    presents, the goal from ``path`` (a text file) or the env's docstring, success as the adapter reads it."""
    import gymnasium as gym

    from hilrl.envs.adapter import SUCCESS_KEYS, GymnasiumAdapter, check_env_id, import_env_package

    import_env_package(task_id, None)
    check_env_id(task_id)
    env = GymnasiumAdapter.adapt(gym.make(task_id), env_id=task_id)
    try:
        doc, limit = env.docstring, env.max_episode_steps
        fields = "\n".join(_field(k, sp) for k, sp in env.observation_space.spaces.items())
        size = env.action_space.shape[0]
    finally:
        env.close()
    if path is not None:
        description = _read_text(path)
    else:
        paragraphs = [part.strip() for part in doc.split("\n\n") if part.strip() and not part.strip().startswith("#")]
        description = paragraphs[0] if paragraphs else f"Solve the gymnasium task {task_id}."
    observation = (f"obs and next_obs are dicts of numpy arrays with a leading batch axis N (next_obs: after the "
                   f"action):\n{fields}\naction (N, {size}) float32 in [-1, 1] (rescaled to the env's own bounds)")
    ends = f" or after {limit} steps" if limit else ""
    success = (f"the env reports success (info key {' / '.join(SUCCESS_KEYS)}); the episode ends when the env "
               f"terminates{ends}")
    return TaskText(description, observation, success)
