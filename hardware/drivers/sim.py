"""The MuJoCo reference driver: one hilrl arm task running behind the robot server.

The task is stepped once per ``move`` (one control period of physics), so
between commands the simulated arm is frozen: holding is exact, and the same
seeded episode played through the server reproduces the local task. With
``realtime`` the driver also waits out the rest of each control period, as a
real arm would.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hardware.driver import ArmCommand, ArmDriver, ArmState, NotReady
from hardware.limits import ConfigError, SimDriverConfig
from hilrl.envs.protocol import space_to_wire


class SimArmDriver(ArmDriver):
    """Runs ``config.task`` (e.g. ``hilrl/Reach-v0``) at ``control_hz``."""

    name = "sim"

    def __init__(self, config: SimDriverConfig, control_hz: float) -> None:
        import gymnasium as gym

        import hilrl.envs  # noqa: F401  (registers the tasks)

        kwargs = dict(config.env_kwargs)
        if kwargs.setdefault("control_hz", control_hz) != control_hz:
            raise ConfigError(
                f"sim.env_kwargs.control_hz={kwargs['control_hz']} differs from control_hz={control_hz}; remove it from env_kwargs"
            )
        # gym.make would turn max_episode_steps into a TimeLimit wrapper; the task counts steps itself.
        max_episode_steps = kwargs.pop("max_episode_steps", None)
        try:
            # The bare task: the server already validates actions, and truncation lives inside the task.
            self.env = gym.make(config.task, **kwargs).unwrapped
        except (gym.error.Error, TypeError, ValueError) as exc:
            raise ConfigError(f"sim.task={config.task!r} cannot be made: {exc}") from None
        if max_episode_steps is not None:
            self.env.max_episode_steps = int(max_episode_steps)
        self.period = 1.0 / control_hz
        self.realtime = config.realtime
        self._task_id = config.task
        self._state: ArmState | None = None
        self._last_move = 0.0

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
                "sim_state": self.env.get_state()}
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
