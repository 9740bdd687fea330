"""A scripted pick expert for gym-hil's ``PandaPickCube`` (LeRobot's HIL-SERL simulator, ``gym-hil`` 0.1.14).

What the expert reads and writes, from gym-hil's source (``gym_hil/mujoco_gym_env.py``,
``gym_hil/envs/panda_pick_gym_env.py``, ``gym_hil/wrappers/hil_wrappers.py``):

* ``agent_pos`` (18): the arm's 7 joint positions, its 7 joint velocities, the gripper command
  (the Robotiq 2F-85 actuator's ctrl, 0 open .. 255 closed) and the pinch site's position (the tool
  centre, between the finger tips). ``environment_state`` (3): the 4 cm block's centre.
  hilrl's env adapter presents gym-hil's Dict with these two keys as they are.
* ``gym_hil/PandaPickCubeBase-v0``'s 7-d action ``[x, y, z, rx, ry, rz, grasp]``: ``x, y, z`` move the
  operational-space controller's mocap target by that many **metres** (the target is clipped to the
  workspace box), the rotation entries are ignored, and ``grasp`` is added to the gripper command as a
  fraction of its range (``+1`` closes fully in one step, ``-1`` opens). The wrapped
  ``gym_hil/PandaPickCube-v0`` (their ``EEActionWrapper``) takes 4-d ``[x, y, z, grasp]`` with ``x, y, z``
  in units of ``ee_step_size`` (2.5 cm) and ``grasp`` in ``[0, 2]`` (``1`` = keep); through hilrl's adapter,
  which rescales a Box to ``[-1, 1]``, ``grasp`` again reads ``+1`` close, ``-1`` open. Both are handled.
* Success (``info["succeed"]``): the block's centre 0.1 m above where it started (the episode ends there).

The policy (a proportional controller towards a waypoint, as :class:`hilrl.feedback.experts.ScriptedExpert`):
open and move above the block; descend until the tool centre is at the block's centre; close and wait
``CLOSE_STEPS`` steps for the fingers; lift. The phase is chosen from the observation each step (so the
expert can take over mid-episode as a simulated person), except the short wait after closing, which the
observation cannot show (gym-hil reports the gripper command, not the finger positions).

Noise (``noise`` in [0, 1], the model of :mod:`hilrl.feedback.experts`): each step, with probability
``noise / 2`` the motion is replaced by a uniform random one within the expert's largest step, else gaussian
noise with standard deviation ``noise`` times that step is added; the grasp command is never perturbed.
Measured success over 50 episodes with a random block position (``python benchmarks/expert_success.py --env
gym_hil/PandaPickCubeBase-v0 --env-kwargs '{"random_block_position": true}' --noise 0 0.1 0.2 0.3 0.5
--episodes 50``: env seeds 0..49, expert seed 0, gym-hil 0.1.14 on mujoco 3.8.1; Intel Xeon, 2 cores shared with
other jobs):

    =========  ====  ====  ====  ====  =====
    noise      0     0.1   0.2   0.3   0.5
    success    1.00  1.00  0.80  0.28  0.00
    length     22.7  26.9  60.8  88.0  100.0
    =========  ====  ====  ====  ====  =====

gym-hil's fixed block (its default) is picked in 13 steps at noise 0.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.feedback.experts import ExpertError

MAX_STEP = 0.03  # m per step: the opspace controller keeps up with it (0.1 s control period)
GAIN = 1.0  # of the remaining distance per step, before the MAX_STEP clip
HOVER = 0.05  # m above the block's centre while lining up
XY_TOLERANCE = 0.006  # m: lined up above the block
Z_TOLERANCE = 0.006  # m: the tool centre at the block's centre
HOLD_DISTANCE = 0.02  # m: tool centre to block centre while holding it
CLOSE_STEPS = 3  # steps the 2F-85 takes to close on the block
LIFT = 0.16  # m above the block's start height (success is 0.1)


def _ee_step_size(env: gym.Env) -> np.ndarray | None:
    """gym-hil's ``EEActionWrapper`` step sizes (m per unit action), if ``env`` has that wrapper inside."""
    inner: Any = getattr(env, "foreign", env)
    while inner is not None:
        if type(inner).__name__ == "EEActionWrapper":
            return np.asarray(inner._ee_step_size, dtype=np.float64)
        inner = getattr(inner, "env", None)
    return None


class PickCubeExpert:
    """Scripted pick of gym-hil's block. Use :func:`make_pick_cube_expert`.

    :param action_dim: 7 (``PandaPickCubeBase-v0``: metres) or 4 (``PandaPickCube-v0``: steps of ``step_size``).
    :param step_size: metres per unit of the xyz action (1.0 for the base env).
    :param noise: sub-optimality in [0, 1] (module docstring).
    :param seed: seed of the noise.
    :param block_sensor: gym-hil's ``block_pos`` sensor (``data.sensor("block_pos")``), read when the observation
        has no ``environment_state`` (``image_obs=True``); None reads the observation.
    :param grasp_offset: added to the grasp command (1.0 for gym-hil's own ``[0, 2]`` grasp of ``PandaPickCube-v0``).
    """

    def __init__(self, action_dim: int, step_size: np.ndarray | float = 1.0, noise: float = 0.0,
                 seed: int | None = None, block_sensor: Any = None, grasp_offset: float = 0.0) -> None:
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0.0 <= noise <= 1.0:
            raise ExpertError(f"noise={noise!r}: must be in [0, 1] (0 = best expert, 1 = mostly random).")
        self.action_dim = action_dim
        self.step_size = np.broadcast_to(np.asarray(step_size, dtype=np.float64), (3,)).copy()
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self._closed_for = 0
        self._start_z: float | None = None
        self._block_sensor = block_sensor
        self.grasp_offset = float(grasp_offset)

    def reset(self) -> None:
        self._closed_for = 0
        self._start_z = None

    def _motion_and_grasp(self, tcp: np.ndarray, block: np.ndarray, gripper: float) -> tuple[np.ndarray, float]:
        if self._start_z is None:
            self._start_z = float(block[2])
        offset = block - tcp
        holding = gripper > 0.5 and np.linalg.norm(offset) < HOLD_DISTANCE
        if holding:  # closed on the block: wait for the fingers, then lift
            self._closed_for += 1
            if self._closed_for <= CLOSE_STEPS:
                return np.zeros(3), 1.0
            return np.array([block[0], block[1], self._start_z + LIFT]) - tcp, 1.0
        self._closed_for = 0
        if gripper > 0.5:  # closed on nothing (a missed or dropped block): open before anything else
            return np.zeros(3), -1.0
        if np.linalg.norm(offset[:2]) > XY_TOLERANCE:  # line up above the block
            return np.array([block[0], block[1], max(block[2] + HOVER, tcp[2])]) - tcp, -1.0
        if offset[2] < -Z_TOLERANCE:  # descend onto it
            return offset, -1.0
        return np.zeros(3), 1.0  # at the block's centre: close

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        agent = np.asarray(obs["agent_pos"], dtype=np.float64)
        tcp, gripper = agent[15:18], agent[14] / 255.0
        block = np.array(obs["environment_state"] if self._block_sensor is None else self._block_sensor.data,
                         dtype=np.float64)
        motion, grasp = self._motion_and_grasp(tcp, block, gripper)
        motion = np.clip(GAIN * motion, -MAX_STEP, MAX_STEP)
        if self.noise > 0.0:
            if self.rng.random() < self.noise / 2:
                motion = self.rng.uniform(-MAX_STEP, MAX_STEP, 3)
            else:
                motion = motion + self.rng.normal(0.0, self.noise * MAX_STEP, 3)
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip(motion / self.step_size, -1.0, 1.0)
        action[-1] = grasp + self.grasp_offset
        return action


def make_pick_cube_expert(env: gym.Env, noise: float = 0.0, seed: int | None = None) -> PickCubeExpert:
    """The scripted pick expert for ``gym_hil/PandaPickCubeBase-v0`` (7-d actions) or ``gym_hil/PandaPickCube-v0``
    (4-d, through gym-hil's ``EEActionWrapper``), state observations, as hilrl's adapter presents them.

    :param env: the env (hilrl's adapter around gym-hil's, or gym-hil's own).
    :param noise: sub-optimality in [0, 1]; 0 is the best expert.
    :param seed: seed of the noise.
    """
    spaces = getattr(env, "observation_space", None)
    keys = set(spaces.spaces) if isinstance(spaces, gym.spaces.Dict) else set()
    block_sensor = None
    if "agent_pos" not in keys:
        raise ExpertError(f"the gym-hil pick expert reads obs['agent_pos'] (gym-hil's PandaPickCube); this env's "
                          f"observations are {sorted(keys) or spaces}")
    if "environment_state" not in keys:  # image_obs: the block's position from the simulator (a privileged expert)
        data = getattr(getattr(env, "foreign", env).unwrapped, "data", None)
        if data is None:
            raise ExpertError("the gym-hil pick expert needs the block's position: obs['environment_state'] or the "
                              "env's MuJoCo data (unwrapped.data)")
        block_sensor = data.sensor("block_pos")
    action_dim, grasp_offset = int(env.action_space.shape[0]), 0.0
    if action_dim == 7:
        step_size: np.ndarray | float = 1.0
    elif action_dim == 4:
        found = _ee_step_size(env)
        step_size = found if found is not None else 0.025
        if float(env.action_space.low[-1]) == 0.0 and float(env.action_space.high[-1]) == 2.0:
            grasp_offset = 1.0  # gym-hil's own [0, 2] grasp, not rescaled by hilrl's adapter
    else:
        raise ExpertError(f"the gym-hil pick expert drives 7-d (PandaPickCubeBase-v0) or 4-d (PandaPickCube-v0) "
                          f"actions, not {action_dim}-d")
    return PickCubeExpert(action_dim, step_size, noise=noise, seed=seed, block_sensor=block_sensor,
                          grasp_offset=grasp_offset)
