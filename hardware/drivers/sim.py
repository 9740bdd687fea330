"""The MuJoCo reference driver: one hilrl arm task running behind the robot server.

The task is stepped once per ``move`` (one control period of physics), so
between commands the simulated arm is frozen: holding is exact, and the same
seeded episode played through the server reproduces the local task. With
``realtime`` the driver also waits out the rest of each control period, as a
real arm would.

It serves the task a client asks for in its ``hello`` (``prepare_task`` /
``switch_task``), among the tasks the robot config allows (``sim.tasks``), at the
config's ``control_hz``; the server decides when a switch may happen.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hardware.driver import ArmCommand, ArmDriver, ArmState, NotReady
from hardware.limits import CommandRejected, RobotConfigError, SimDriverConfig
from hilrl.envs.protocol import space_to_wire


class SimArmDriver(ArmDriver):
    """Runs ``config.task`` (e.g. ``hilrl/Reach-v0``) at ``control_hz``, or another task of ``config.tasks`` a client asks for."""

    name = "sim"

    def __init__(self, config: SimDriverConfig, control_hz: float) -> None:
        import gymnasium as gym

        import hilrl.envs  # noqa: F401  (registers the tasks; sets MUJOCO_GL before MuJoCo loads)

        self.config = config
        self.control_hz = float(control_hz)
        hilrl_ids = sorted(k for k in gym.registry if k.startswith("hilrl/"))
        self.tasks = tuple(config.tasks) if config.tasks is not None else tuple(dict.fromkeys([*hilrl_ids, config.task]))
        unknown = [task for task in self.tasks if task not in gym.registry]
        if unknown:
            raise RobotConfigError(f"sim.task/sim.tasks name unregistered ids {unknown}; the hilrl tasks are {', '.join(hilrl_ids)}")
        kwargs = dict(config.env_kwargs)
        if kwargs.setdefault("control_hz", self.control_hz) != self.control_hz:
            raise RobotConfigError(
                f"sim.env_kwargs.control_hz={kwargs['control_hz']} differs from control_hz={control_hz}; remove it from env_kwargs"
            )
        try:
            self.env = self._make(config.task, kwargs)
        except CommandRejected as exc:
            raise RobotConfigError(f"sim.task={config.task!r}: {exc}") from None
        self._task_id = config.task
        self._kwargs = kwargs
        self.period = 1.0 / control_hz
        self.realtime = config.realtime
        self._state: ArmState | None = None
        self._last_move = 0.0

    @staticmethod
    def _make(task_id: str, kwargs: dict[str, Any]):
        import gymnasium as gym

        try:
            # The bare task: the server already validates actions, and truncation lives inside the task
            # (gymnasium.make hands max_episode_steps to it through the ids' TaskTimeLimit wrapper).
            return gym.make(task_id, **kwargs).unwrapped
        except (gym.error.Error, TypeError, ValueError) as exc:
            raise CommandRejected(f"{task_id} cannot be made with {kwargs}: {exc}") from None

    # ---------------------------------------------------------------- choosing the task

    def prepare_task(self, task: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        task_id = task.get("id", self._task_id)
        if task_id not in self.tasks:
            raise CommandRejected(
                f"task {task_id!r} is not served here: this robot config allows {', '.join(self.tasks)} "
                "(sim.tasks); ask for one of them or start the server with another robot config"
            )
        control_hz = task.get("control_hz", self.control_hz)
        if control_hz != self.control_hz:
            raise CommandRejected(
                f"control_hz={control_hz} but this robot runs at {self.control_hz} Hz (control_hz in the robot config); "
                f"ask for {self.control_hz}"
            )
        settings = {key: value for key, value in task.items() if key != "id"}
        if task_id == self._task_id and all(self._setting(key) == value for key, value in settings.items()):
            return None
        # Settings the hello leaves out keep their values for the same task, else come from the config.
        base = self._kwargs if task_id == self._task_id else {**self.config.env_kwargs, "control_hz": self.control_hz}
        return task_id, {**base, **settings}

    def _setting(self, key: str) -> Any:
        value = getattr(self.env, key)
        return list(value) if key == "cameras" else value

    def switch_task(self, prepared: tuple[str, dict[str, Any]]) -> None:
        task_id, kwargs = prepared
        env = self._make(task_id, kwargs)  # the old task keeps running if this fails
        self.env.close()
        self.env, self._task_id, self._kwargs = env, task_id, kwargs
        self._state = None

    def describe(self) -> dict[str, Any]:
        env = self.env
        return {
            "task_id": self._task_id,
            "task_name": env.task_name,
            "observation_space": space_to_wire(env.observation_space),
            "action_space": space_to_wire(env.action_space),
            "action_scale": env.action_scale,
            "rotation_scale": env.rotation_scale,
            "use_rotation": env.use_rotation,
            "workspace": [np.asarray(env.workspace[0], float), np.asarray(env.workspace[1], float)],
            "cameras": list(env.cameras),
            "image_size": env.image_size,
            "control_hz": env.control_hz,
            "max_episode_steps": env.max_episode_steps,
            "terminate_on_success": env.terminate_on_success,
            "reward_type": env.reward_type,
            "reward_terms": list(env.reward_terms),
            "tasks": list(self.tasks),
        }

    def _snapshot(self, obs: dict[str, np.ndarray], task: dict[str, Any]) -> ArmState:
        env = self.env
        return ArmState(
            ee_pos=np.array(env.tcp_pos(), dtype=np.float64),
            ee_quat=obs["ee_quat"].astype(np.float64),
            gripper=float(obs["gripper"][0]),
            joint_pos=obs["joint_pos"].astype(np.float64),
            joint_vel=obs["joint_vel"].astype(np.float64),
            obs=obs,
            task=task,
        )

    def reset(self, seed: int | None) -> ArmState:
        obs, info = self.env.reset(seed=seed)
        task = {"reward": 0.0, "terminated": False, "truncated": False, "is_success": bool(info["is_success"]),
                "reward_terms": info["reward_terms"], "sim_state": self.env.get_state()}
        self._state = self._snapshot(obs, task)
        self._last_move = time.monotonic()
        return self._state

    def move(self, command: ArmCommand) -> ArmState:
        if self._state is None:
            raise NotReady("the sim arm has no episode yet; send 'reset' first")
        env = self.env
        action = np.zeros(env.action_space.shape, dtype=np.float64)
        action[:3] = command.delta_pos / env.action_scale
        if env.use_rotation and command.delta_rot is not None:
            action[3:6] = command.delta_rot / env.rotation_scale
        action[-1] = command.gripper
        if self.realtime:
            wait = self._last_move + self.period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        obs, reward, terminated, truncated, info = env.step(action)
        self._last_move = time.monotonic()
        task = {
            "reward": float(reward),
            "terminated": bool(terminated),
            "truncated": bool(truncated),
            "is_success": bool(info["is_success"]),
            "reward_terms": info["reward_terms"],
            # the full MuJoCo state lets recordings made through the server be replayed state-exactly
            "sim_state": env.get_state(),
        }
        self._state = self._snapshot(obs, task)
        return self._state

    def read(self, images: bool = True) -> ArmState:
        if self._state is None:
            # Before the first reset the arm stands at its home pose; report it without starting an episode.
            return self._snapshot(self.env.get_obs(), None)  # type: ignore[arg-type]
        return self._state

    def hold(self) -> None:
        # Physics only advances inside move(), so a silent server already holds the pose exactly.
        pass

    def close(self) -> None:
        self.env.close()
