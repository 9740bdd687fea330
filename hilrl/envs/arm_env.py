"""Base class shared by every hilrl MuJoCo arm task.

One class holds the arm, the controller, observations, rendering, state save/restore and the
time limit; a task subclass only says which scene to load, how to randomise a reset, what goes
in ``obs["object"]`` and how reward and success are computed.

Action (``Box(-1, 1)``): ``[dx, dy, dz, (droll, dpitch, dyaw,) gripper]``.
    The xyz part times ``action_scale`` (meters) is added to the current tool-centre-point
    position and the target is clipped to ``workspace``; with ``use_rotation=True`` the rpy
    part times ``rotation_scale`` (radians) rotates the current orientation, otherwise the
    gripper keeps pointing down. ``gripper`` is an absolute command: -1 closed, +1 open.
Observation (``Dict``, float32 unless noted):
    ``ee_pos`` (3,) tool centre point in the world frame (m); ``ee_quat`` (4,) wxyz;
    ``gripper`` (1,) opening in [0, 1]; ``joint_pos`` (7,); ``joint_vel`` (7,);
    ``object`` (task-specific, see each task); and for each name in ``cameras`` an
    ``(image_size, image_size, 3)`` uint8 image (``front``, ``wrist``).
Time: the step count lives in MuJoCo's ``data.time`` so ``set_state`` restores it too;
    ``truncated`` is raised at ``max_episode_steps`` inside the env (it also works remotely).
Info: ``is_success`` (bool) and ``reward_terms``, a fresh dict ``name -> float`` (every step and
    at reset, whatever ``reward_type`` is) holding the physically meaningful factors the task's
    dense reward is made of, in the order of the class attribute ``reward_terms``; each task's
    docstring gives their units and how the dense reward combines them. Reward learning ranks or
    reweights such factors (HERON: Bukharin et al., "Deep Reinforcement Learning from Hierarchical
    Preference Design", arXiv:2309.02632) and reports them back when it rewrites a reward
    (Eureka's reward reflection: Ma et al., arXiv:2310.12931).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from hilrl.envs.controller import DLSController
from hilrl.envs.rendering import CameraRenderer
from hilrl.errors import HilrlError

ASSETS = Path(__file__).resolve().parent / "assets"
ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
CAMERA_NAMES = ("front", "wrist")
REWARD_TYPES = ("dense", "sparse", "dense_cost")
# Tool centre point at (0.45, 0, 0.30) pointing down; found once by IK from the Panda "ready" pose.
HOME_QPOS = np.array([0.0, -0.2594, 0.0, -2.4315, 0.0, 2.1721, 0.7854])
FINGER_MAX_OPENING = 0.04  # per finger (m); the total opening is twice this.
GRASP_FORCE = 0.5  # N per finger pad: the least squeeze a grasp reward counts (ArmEnv.pads_squeeze)
# State spec for get_state/set_state: everything the integrator needs, including ctrl
# (controller targets), mocap poses (goals, fixtures) and the warm start (exact replay).
STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
OBS_OBJECT_START = 22  # ee_pos 3 + ee_quat 4 + gripper 1 + joint_pos 7 + joint_vel 7


class ArmEnvError(HilrlError, ValueError):
    """Bad constructor argument, action or state for an arm task (also a ``ValueError``)."""


class ArmEnv(gym.Env):
    """A 7-DoF arm task with end-effector delta control. Subclass it; do not use directly.

    Args:
        cameras: camera observations to render, any of ``("front", "wrist")``; ``()`` renders nothing.
        image_size: side of the square camera observations in pixels.
        control_hz: policy rate; each ``step`` runs ``round(1 / (control_hz * physics_dt))`` physics steps.
        physics_dt: MuJoCo timestep in seconds (0.005 with the implicitfast integrator is stable for
            every task and keeps the substep count at 20 for 10 Hz).
        use_rotation: add three rotation deltas (roll, pitch, yaw) to the action.
        max_episode_steps: time limit in policy steps; ``None`` takes the task default.
        terminate_on_success: end the episode (``terminated=True``) when the task succeeds.
        reward_type: ``"dense"`` (the task's shaped reward), ``"sparse"`` (1.0 on success else 0.0) or
            ``"dense_cost"`` (the shaped reward minus its maximum ``dense_reward_max``, so <= 0). With
            ``terminate_on_success`` a staged positive reward (PickCube, PegInsert) would pay the agent to
            keep going instead of succeeding; as a cost, ending the episode by succeeding is what pays.
            For tasks whose dense reward is already a cost (Reach, Push) it equals ``"dense"``.
        render_mode: ``"rgb_array"`` or ``"human"`` (a passive viewer; needs ``DISPLAY``).
        render_size: side of the square ``render()`` image.
        action_scale: meters per unit of translation action per step.
        rotation_scale: radians per unit of rotation action per step.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "human"], "render_fps": 10}

    # Set by each task.
    task_name: ClassVar[str] = ""
    xml_file: ClassVar[str] = ""
    default_max_episode_steps: ClassVar[int] = 100
    dense_reward_max: ClassVar[float] = 0.0  # the dense reward's maximum; "dense_cost" subtracts it
    reward_terms: ClassVar[tuple[str, ...]] = ()  # names of info["reward_terms"], in order
    object_dim: ClassVar[int] = 0
    # Workspace box for the tool centre point (m, world frame): z_low keeps the fingertips off the table.
    workspace_low: ClassVar[tuple[float, float, float]] = (0.25, -0.3, 0.015)
    workspace_high: ClassVar[tuple[float, float, float]] = (0.68, 0.3, 0.35)

    def __init__(
        self,
        cameras: tuple[str, ...] | list[str] = (),
        image_size: int = 128,
        control_hz: float = 10.0,
        physics_dt: float = 0.005,
        use_rotation: bool = False,
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        reward_type: str = "dense",
        render_mode: str | None = "rgb_array",
        render_size: int = 256,
        action_scale: float = 0.05,
        rotation_scale: float = 0.2,
    ) -> None:
        super().__init__()
        cameras = tuple(cameras)
        for cam in cameras:
            if cam not in CAMERA_NAMES:
                raise ArmEnvError(f"cameras={cameras!r}: unknown camera {cam!r}; use any of {CAMERA_NAMES}.")
        if len(set(cameras)) != len(cameras):
            raise ArmEnvError(f"cameras={cameras!r} lists a camera twice; list each at most once.")
        _check_positive("image_size", image_size, int)
        _check_positive("render_size", render_size, int)
        _check_positive("control_hz", control_hz, (int, float))
        _check_positive("physics_dt", physics_dt, (int, float))
        _check_positive("action_scale", action_scale, (int, float))
        _check_positive("rotation_scale", rotation_scale, (int, float))
        if reward_type not in REWARD_TYPES:
            raise ArmEnvError(f"reward_type={reward_type!r}: use one of {', '.join(REWARD_TYPES)}.")
        if render_mode not in (None, "rgb_array", "human"):
            raise ArmEnvError(f"render_mode={render_mode!r}: use 'rgb_array', 'human' or None.")
        if max_episode_steps is None:
            max_episode_steps = self.default_max_episode_steps
        _check_positive("max_episode_steps", max_episode_steps, int)
        substeps = round(1.0 / (control_hz * physics_dt))
        if substeps < 1 or abs(substeps * physics_dt * control_hz - 1.0) > 1e-6:
            raise ArmEnvError(
                f"control_hz={control_hz} and physics_dt={physics_dt}: 1/(control_hz*physics_dt) must be a "
                f"whole number of physics steps (got {1.0 / (control_hz * physics_dt):.4f}); e.g. physics_dt=0.005 at 10 Hz."
            )

        self.cameras = cameras
        self.image_size = int(image_size)
        self.control_hz = float(control_hz)
        self.physics_dt = float(physics_dt)
        self.substeps = int(substeps)
        self.use_rotation = bool(use_rotation)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = bool(terminate_on_success)
        self.reward_type = reward_type
        self.render_size = int(render_size)
        self.action_scale = float(action_scale)
        self.rotation_scale = float(rotation_scale)
        self.workspace = (np.array(self.workspace_low), np.array(self.workspace_high))

        self.model = self._build_model()
        self.model.opt.timestep = self.physics_dt
        self.data = mujoco.MjData(self.model)
        # Views into MjData, made once: creating them costs about a microsecond per access.
        data = self.data
        self._qpos, self._qvel, self._ctrl_all, self._mocap_pos = data.qpos, data.qvel, data.ctrl, data.mocap_pos
        self._cache_ids()
        self._tcp = data.site_xpos[self._tcp_id]
        self._tcp_mat = data.site_xmat[self._tcp_id]
        self._finger0, self._finger1 = (int(a) for a in self._finger_qadr)
        self._arm0 = int(self._arm_qadr[0])
        self._obs_buf = np.zeros(OBS_OBJECT_START + self.object_dim)
        self._action_shape = (7 if use_rotation else 4,)
        self._home_quat = self._home_tcp_quat()
        self.controller = DLSController(
            self.model, self.data, self._tcp_id, self._arm_qadr, self._arm_act_ids, HOME_QPOS
        )

        self.action_space = spaces.Box(-1.0, 1.0, shape=(7 if use_rotation else 4,), dtype=np.float32)
        obs_spaces: dict[str, spaces.Space] = {
            "ee_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32),
            "ee_quat": spaces.Box(-1.0, 1.0, (4,), np.float32),
            "gripper": spaces.Box(0.0, 1.0, (1,), np.float32),
            "joint_pos": spaces.Box(-np.inf, np.inf, (7,), np.float32),
            "joint_vel": spaces.Box(-np.inf, np.inf, (7,), np.float32),
            "object": spaces.Box(-np.inf, np.inf, (self.object_dim,), np.float32),
        }
        for cam in cameras:
            obs_spaces[cam] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

        self._state_size = mujoco.mj_stateSize(self.model, STATE_SPEC)
        self._camera_renderer = CameraRenderer(self.model, self.image_size, self.image_size) if cameras else None
        self._render_renderer: CameraRenderer | None = None
        self._viewer = None
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        self.render_mode = render_mode
        if render_mode == "human" and not os.environ.get("DISPLAY"):
            warnings.warn(
                "render_mode='human' needs a display (DISPLAY is not set); falling back to 'rgb_array'.",
                stacklevel=2,
            )
            self.render_mode = "rgb_array"
        self._target_pos = np.zeros(3)
        self._target_quat = np.zeros(4)
        self._rot_delta = np.zeros(4)
        self._reset_arm()
        self._update_kinematics()

    # ------------------------------------------------------------------ task hooks
    def _build_model(self) -> mujoco.MjModel:
        """The compiled scene; a task variant (another object size or table friction) edits the MJCF
        through ``mujoco.MjSpec`` here before compiling. Runs before ``__init__`` caches any id."""
        return mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))

    def _sample_task(self) -> None:
        """Randomise objects and goals with ``self.np_random`` (write qpos and mocap only)."""
        raise NotImplementedError

    def _write_object_obs(self, out: np.ndarray) -> None:
        """Write the task's ``obs["object"]`` vector into ``out`` (float64, length ``object_dim``)."""
        raise NotImplementedError

    def _reward_and_success(self) -> tuple[float, bool, dict[str, float]]:
        """Dense reward, success flag and a new dict of the named terms (``reward_terms``) the dense
        reward is made of, for the current state (a pure function of the state)."""
        raise NotImplementedError

    def _task_cache_ids(self) -> None:
        """Look up task-specific ids (bodies, joints, mocap) once."""

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._reset_arm()
        self._sample_task()
        mujoco.mj_forward(self.model, self.data)
        self._update_kinematics()
        _, success, terms = self._reward_and_success()
        return self.get_obs(), {"is_success": bool(success), "reward_terms": terms}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self._action_shape:
            raise ArmEnvError(
                f"action has shape {action.shape}, expected {self._action_shape} "
                f"([dx, dy, dz{', droll, dpitch, dyaw' if self.use_rotation else ''}, gripper] in [-1, 1])."
            )
        total = float(action.sum())  # one reduction catches any NaN or inf entry
        if not math.isfinite(total):
            raise ArmEnvError(f"action {action} has NaN or inf entries; send finite values in [-1, 1].")
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        target = self._target_pos
        mujoco.mju_addScl3(target, self._tcp, action[:3], self.action_scale)
        np.minimum(np.maximum(target, self.workspace[0], out=target), self.workspace[1], out=target)
        if self.use_rotation:
            mujoco.mju_euler2Quat(self._rot_delta, action[3:6] * self.rotation_scale, "xyz")
            mujoco.mju_mulQuat(self._target_quat, self._rot_delta, self.controller.site_quat())
            self.controller.set_targets(target, self._target_quat)
        else:
            self.controller.set_targets(target, self._home_quat)
        self._ctrl_all[self._gripper_act_id] = (action[-1] + 1.0) * (0.5 * FINGER_MAX_OPENING)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self._update_kinematics()

        dense, success, terms = self._reward_and_success()
        if self.reward_type == "sparse":
            reward = float(success)
        elif self.reward_type == "dense_cost":
            reward = dense - self.dense_reward_max
        else:
            reward = dense
        terminated = bool(success) and self.terminate_on_success
        truncated = self.elapsed_steps >= self.max_episode_steps
        if self._viewer is not None:
            self._viewer.sync()
        info = {"is_success": bool(success), "reward_terms": terms}
        return self.get_obs(), float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode == "human":
            self._sync_viewer()
            return None
        if self._render_renderer is None:
            self._render_renderer = CameraRenderer(self.model, self.render_size, self.render_size)
        return self._render_renderer.render(self.data, "front")

    def close(self) -> None:
        for r in (self._camera_renderer, self._render_renderer):
            if r is not None:
                r.close()
        self._camera_renderer = self._render_renderer = None
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None

    # ------------------------------------------------------------------ state
    @property
    def elapsed_steps(self) -> int:
        """Policy steps since reset, read from MuJoCo time so that ``set_state`` restores it."""
        return int(round(self.data.time * self.control_hz))

    def get_state(self) -> np.ndarray:
        """Full MuJoCo integration state (float64): time, qpos, qvel, act, warm start, ctrl, mocap..."""
        state = np.empty(self._state_size)
        mujoco.mj_getState(self.model, self.data, state, STATE_SPEC)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from ``get_state``; the next ``get_obs``/``step`` replay exactly."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self._state_size,):
            raise ArmEnvError(
                f"state has shape {state.shape}, expected ({self._state_size},) from {self.task_name}'s get_state(); "
                "a state recorded with another task or MuJoCo model cannot be restored."
            )
        if not np.all(np.isfinite(state)):
            raise ArmEnvError("state has NaN or inf entries; pass a state returned by get_state().")
        mujoco.mj_setState(self.model, self.data, state, STATE_SPEC)
        mujoco.mj_forward(self.model, self.data)
        self._update_kinematics()

    def get_obs(self) -> dict[str, np.ndarray]:
        """Observation for the current state (fresh arrays every call; safe to store)."""
        buf, qpos, arm0 = self._obs_buf, self._qpos, self._arm0
        buf[0:3] = self._tcp
        mujoco.mju_mat2Quat(buf[3:7], self._tcp_mat)
        opening = (qpos[self._finger0] + qpos[self._finger1]) / (2 * FINGER_MAX_OPENING)
        buf[7] = min(max(opening, 0.0), 1.0)
        buf[8:15] = qpos[arm0 : arm0 + 7]
        buf[15:22] = self._qvel[arm0 : arm0 + 7]
        self._write_object_obs(buf[OBS_OBJECT_START:])
        # One cast, then views: each step's arrays share one fresh buffer, never the next step's.
        flat = buf.astype(np.float32)
        obs = {
            "ee_pos": flat[0:3],
            "ee_quat": flat[3:7],
            "gripper": flat[7:8],
            "joint_pos": flat[8:15],
            "joint_vel": flat[15:22],
            "object": flat[OBS_OBJECT_START:],
        }
        for cam in self.cameras:
            obs[cam] = self._camera_renderer.render(self.data, cam)
        return obs

    # ------------------------------------------------------------------ internals
    def _update_kinematics(self) -> None:
        # mj_step leaves positions of the pre-step state in xpos; refresh what observations,
        # the Jacobian (needs comPos) and cameras (camlight) read. Deterministic, so
        # set_state + get_obs reproduces these exactly.
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        if self.cameras or self._render_renderer is not None or self._viewer is not None:
            mujoco.mj_camlight(self.model, self.data)

    def _cache_ids(self) -> None:
        m = self.model
        self._tcp_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "tcp")
        joint_ids = [m.joint(name).id for name in ARM_JOINTS]
        self._arm_qadr = m.jnt_qposadr[joint_ids].copy()
        self._arm_dofadr = m.jnt_dofadr[joint_ids].copy()
        if not np.array_equal(self._arm_qadr, self._arm_dofadr):
            raise RuntimeError(f"{self.xml_file}: arm joints must come first so qpos and dof addresses match.")
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ("finger_left", "finger_right")])
        self._arm_act_ids = np.array([m.actuator(name).id for name in ARM_JOINTS])
        if not np.array_equal(self._arm_act_ids, np.arange(self._arm_act_ids[0], self._arm_act_ids[0] + 7)):
            raise RuntimeError(f"{self.xml_file}: the 7 arm actuators must be contiguous and in joint order.")
        self._gripper_act_id = m.actuator("gripper").id
        self._pad_geoms = (m.geom("left_pad").id, m.geom("right_pad").id)
        self._contact_force = np.zeros(6)
        # pads_squeeze: geom id -> (step, pad forces at that step, pad forces the step before)
        self._squeeze_memory: dict[int, tuple[int, tuple[float, float], tuple[float, float]]] = {}
        self._finger_body = m.body("left_finger").id
        self._task_cache_ids()

    def _reset_arm(self) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qadr] = HOME_QPOS
        self.data.ctrl[self._arm_act_ids] = HOME_QPOS
        self.data.qpos[self._finger_qadr] = FINGER_MAX_OPENING
        self.data.ctrl[self._gripper_act_id] = FINGER_MAX_OPENING

    def _home_tcp_quat(self) -> np.ndarray:
        self._reset_arm()
        mujoco.mj_kinematics(self.model, self.data)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, self.data.site_xmat[self._tcp_id])
        return quat

    def _sync_viewer(self) -> None:
        if self._viewer is None:
            import mujoco.viewer  # lazy: needs a display

            self._viewer = mujoco.viewer.launch_passive(self.model, self.data)
        self._viewer.sync()

    # Helpers for tasks.
    def tcp_pos(self) -> np.ndarray:
        """Tool centre point position (a live view into MjData)."""
        return self._tcp

    def gripper_opening(self) -> float:
        """Total finger gap in meters."""
        return float(self._qpos[self._finger0] + self._qpos[self._finger1])

    def pads_squeeze(self, geom_id: int, min_force: float = GRASP_FORCE) -> bool:
        """Whether both finger pads squeeze geom ``geom_id``: each presses on it along the fingers' closing
        axis with a normal force of at least ``min_force`` (N), at the end of this control step and of the one
        before (a squeeze held 0.1 s at 10 Hz). What a grasp reward must require besides geometry.

        Geometry alone (tool centre on the object, a gap that fits it) also holds for an open gripper
        hovering over the object, for pads that merely touch it and for pads resting on its top face;
        none of them can lift it (measured on PickCube after the expert's grasp, the gripper command
        then held: a 0.6 N squeeze carried the cube in 2 of 8 lifts, 1.0 N in 6 of 8, 1.7 N in 7 of 8,
        2.9 N in 8 of 8; a cube held still at the goal by a learned policy, 0.7 N; hovering or merely
        touching pads, 0-0.4 N, hence the 0.5 N default).

        Why two steps: the force is the constraint force of the last physics substep, a sample. When
        descending pads strike a yawed cube's edges that sample holds an impact of about 0.5-0.65 N per
        pad for one step (PickCube seed 0, gripper 0.3: 0.54/0.56 N under mujoco 3.8.1, 0.65/0.47 N
        under 4.0.1; the hover after it 0.39/0.18 N under both), so a one-step rule paid the hover or
        not by the last digits of the solver. An impact lasts one step, a grasp lasts.
        """
        step = self.elapsed_steps
        last_step, last, before = self._squeeze_memory.get(geom_id, (-2, (0.0, 0.0), (0.0, 0.0)))
        # the step before: kept from the last call (one step back), or none after a reset or a jump
        previous = before if step == last_step else last if step == last_step + 1 else (0.0, 0.0)
        now = self.pad_forces(geom_id)
        self._squeeze_memory[geom_id] = (step, now, previous)
        return bool(min(now[0], previous[0], now[1], previous[1]) >= min_force)

    def pad_forces(self, geom_id: int) -> tuple[float, float]:
        """Normal forces (N) of the left and right finger pads on geom ``geom_id`` along the fingers'
        closing axis, after the last physics substep."""
        n = self.data.ncon
        if n < 2:
            return 0.0, 0.0
        axis = self.data.xmat[self._finger_body].reshape(3, 3)[:, 1]  # the fingers slide along the hand's y
        force = [0.0, 0.0]
        for i in np.flatnonzero((self.data.contact.geom[:n] == geom_id).any(axis=1)):
            contact = self.data.contact[int(i)]
            for side, pad in enumerate(self._pad_geoms):
                if pad in (contact.geom1, contact.geom2) and abs(float(contact.frame[:3] @ axis)) > 0.7:
                    mujoco.mj_contactForce(self.model, self.data, int(i), self._contact_force)
                    force[side] += abs(self._contact_force[0])  # the normal component, in the contact frame
        return force[0], force[1]


def _check_positive(name: str, value: Any, types: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types) or not value > 0:
        raise ArmEnvError(f"{name}={value!r}: must be a positive {'integer' if types is int else 'number'}.")
