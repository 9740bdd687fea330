"""One episode driven by a person through a teleop device: the loop behind ``hilrl record --device``.

The device acts on every step. Its buttons shape the episode:

* ``success``: the step after the press is the last; it is stored with ``terminated=True``
  and the episode's ``success`` attribute is True (the person's verdict wins over the env's);
* ``failure``: the step after the press is the last, stored with ``truncated=True`` (a person
  stopping is not an MDP terminal, so bootstrapping stays valid) and ``success`` False;
* ``rerecord``: the episode in progress is discarded (:func:`teleop_episode` returns ``None``).

Otherwise the episode ends when the env terminates or truncates, labelled by ``is_success``.
``attrs["label"]`` says who labelled it: ``"human"`` or ``"env"``. An env made with
``render_mode="human"`` is rendered after every step, so the person sees the simulated arm.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

from hilrl.data.episode import Episode, EpisodeBuilder
from hilrl.feedback.teleop.base import FrameMap, TeleopDevice

GRIPPER_AT_RESET = 1.0  # the arm tasks reset with the gripper open


def teleop_episode(
    env: gym.Env,
    device: TeleopDevice,
    seed: int | None = None,
    pace_hz: float | None = None,
    frame_map: FrameMap | None = None,
    record_states: bool = True,
) -> Episode | None:
    """Run one episode with ``device`` in control; ``None`` when the person asked to re-record.

    Args:
        pace_hz: wait so steps come at most this often (a person needs real time; the
            simulator runs faster). ``None`` steps as fast as the env allows.
        frame_map: device -> action frame; default the device's own.
    """
    frame_map = frame_map or device.frame_map
    action_dim = int(np.prod(env.action_space.shape))
    # a foreign env (hilrl.envs.adapter) says which of its action dimensions are the arm's (env.action_map)
    action_map = getattr(env.unwrapped, "action_map", None)
    arm_dim = action_dim if action_map is None else (7 if action_map.rotation is not None else 4)
    base = env.unwrapped
    get_state = getattr(base, "get_state", None) if record_states else None
    device.reset()
    show = getattr(env, "render_mode", None) == "human"
    obs, _ = env.reset(seed=seed)
    if show:
        env.render()
    builder = EpisodeBuilder(obs, get_state() if get_state else None, seed=-1 if seed is None else int(seed))
    gripper = GRIPPER_AT_RESET
    period = 1.0 / pace_hz if pace_hz else 0.0
    next_tick = time.monotonic()
    info: dict = {}
    while True:
        if period:
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        device.observe(obs)
        command = device.read()
        if "rerecord" in command.buttons:
            return None
        action = frame_map.to_action(command, arm_dim, gripper)
        gripper = float(action[-1])
        if action_map is not None:
            action = action_map.to_env(action, action_dim)
        next_obs, reward, terminated, truncated, info = env.step(action)
        verdict = "success" if "success" in command.buttons else "failure" if "failure" in command.buttons else None
        terminated = terminated or verdict == "success"
        truncated = truncated or verdict == "failure"
        builder.add(action, reward, next_obs, terminated, truncated, get_state() if get_state else None,
                    reward_terms=info.get("reward_terms"))
        if show:
            env.render()
        obs = next_obs
        if terminated or truncated:
            break
    if verdict is None:
        builder.attrs.update(success=bool(info.get("is_success", False)), label="env")
    else:
        builder.attrs.update(success=verdict == "success", label="human")
    return builder.build()
