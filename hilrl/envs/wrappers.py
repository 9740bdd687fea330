"""Wrappers for the arm tasks (local or remote): small, each adding one thing."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hilrl.errors import HilrlError


class TaskTimeLimit(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Hand the limit of gymnasium's ``TimeLimit`` below it to the task, so the task truncates there itself.

    ``gym.make(id, max_episode_steps=N)`` consumes ``N`` and wraps a ``TimeLimit``; the task never
    sees it and keeps truncating at its own default. Every hilrl id is registered with this wrapper
    in ``additional_wrappers``, which ``gymnasium.make`` applies after the ``TimeLimit``
    (gymnasium/envs/registration.py, ``make``): at construction it sets
    ``env.unwrapped.max_episode_steps`` to ``N`` (the smallest, if several ``TimeLimit`` are
    stacked). The task's own limit is what also works through ``set_state`` and the robot server.
    It overrides no ``step``: nothing runs per step beyond the base ``Wrapper`` delegation.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)
        limits = []
        inner = env
        while isinstance(inner, gym.Wrapper):
            if isinstance(inner, gym.wrappers.TimeLimit):
                limits.append(int(inner._max_episode_steps))
            inner = inner.env
        if limits:
            if not hasattr(inner, "max_episode_steps"):
                raise HilrlError(f"TaskTimeLimit wraps a hilrl arm task (with max_episode_steps), got {type(inner).__name__}")
            inner.max_episode_steps = min(limits)


# obs["object"] of Push, PickCube and PegInsert: object position [0:3], quaternion [3:7], goal [7:10].
GOAL_SLICE = slice(7, 10)


class RelativePositions(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Add the vectors a policy otherwise has to learn to subtract (ManiSkill's state features).

    Adds ``tcp_to_object`` = ``object[:3] - ee_pos`` (for Reach, whose ``object`` is the goal,
    this is the way to the goal) and, for tasks whose ``object`` carries a goal at ``[7:10]``,
    ``object_to_goal`` = ``object[7:10] - object[:3]``. Both float32, metres, world frame.

    Why: BC on 10 PickCube demos succeeds in 34-52% of test episodes with these keys and 6-8%
    without (``algo: {name: bc}``, 3000 updates, seeds 0 and 1). The grasp needs the tool within
    8 mm of the cube: a small difference of two large inputs, which an MLP fits poorly from few demos.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "ee_pos" not in space.spaces or "object" not in space.spaces:
            raise HilrlError(f"RelativePositions needs a hilrl arm env's Dict observation with ee_pos and object, "
                             f"got {space}")
        object_dim = int(np.prod(space["object"].shape))
        self._has_goal = object_dim >= GOAL_SLICE.stop
        vector = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        added = {"tcp_to_object": vector, **({"object_to_goal": vector} if self._has_goal else {})}
        self.observation_space = spaces.Dict({**space.spaces, **added})

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        obj = observation["object"]
        observation["tcp_to_object"] = (obj[:3] - observation["ee_pos"]).astype(np.float32)
        if self._has_goal:
            observation["object_to_goal"] = (obj[GOAL_SLICE] - obj[:3]).astype(np.float32)
        return observation


class RealTime(gym.Wrapper):
    """At most ``hz`` steps per second: a person driving or watching the arm needs real time, while the
    simulator runs many times faster (a real arm paces itself; the wait is then ~0).

    A step that comes late (a slow learner update in between) is taken at once, and the next one is
    timed from it, so a stall is not followed by a burst.
    """

    def __init__(self, env: gym.Env, hz: float) -> None:
        super().__init__(env)
        if not hz > 0:
            raise HilrlError(f"RealTime needs a positive rate in steps per second, got {hz!r}")
        self.period = 1.0 / float(hz)
        self._next = time.monotonic()

    def step(self, action: Any):
        now = time.monotonic()
        self._next = max(self._next + self.period, now)
        time.sleep(max(0.0, self._next - now))
        return self.env.step(action)


class FrameEncoder(Protocol):
    """What :class:`FrameFeatures` needs of a frozen image encoder
    (:class:`hilrl.policies.pretrained.FrozenImageEncoder`)."""

    def feature_space(self, image_space: spaces.Box) -> spaces.Box: ...

    def encode(self, images: np.ndarray) -> np.ndarray: ...


def feature_observation_space(space: spaces.Dict, encoder: FrameEncoder, keys: Sequence[str]) -> spaces.Dict:
    """``space`` with the image ``keys`` replaced by the encoder's feature maps: what :class:`FrameFeatures` returns
    and what replay buffers fed by it store."""
    bad = [k for k in keys if not isinstance(space, spaces.Dict) or k not in space.spaces
           or space[k].dtype != np.uint8 or len(space[k].shape) != 3]
    if bad or not keys:
        raise HilrlError(f"frame features encode uint8 (H, W, 3) image keys of a Dict observation; {bad or 'no'} "
                         f"keys of {space} are such images")
    return spaces.Dict({**space.spaces, **{k: encoder.feature_space(space[k]) for k in keys}})


def encode_frames(encoder: FrameEncoder, images: Mapping[str, np.ndarray],
                  keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Feature maps of a batch of frames ``{key: (N, H, W, 3)}``: one encoder call for all ``keys`` when their
    frames have one size (the cameras of one step, a recorded episode), else one per key."""
    if len(keys) > 1 and len({images[k].shape for k in keys}) == 1:
        n = len(images[keys[0]])
        features = encoder.encode(np.concatenate([images[k] for k in keys]))
        return {k: features[i * n:(i + 1) * n] for i, k in enumerate(keys)}
    return {k: encoder.encode(images[k]) for k in keys}


class FrameFeatures(gym.ObservationWrapper):
    """Replace the image keys of a ``Dict`` observation by their feature maps, each frame encoded once.

    HIL-SERL's frozen pretrained encoder (Luo et al. 2024, rail-berkeley/hil-serl) turns each frame into the same
    features every time, so a frame is encoded once, here, when the env returns it: the policy acts on those
    features and the replay buffers store them (the fp16 map is a fifth of the uint8 frame at 128x128), and no
    update ever runs the backbone. The frames of one step are encoded in one call (:func:`encode_frames`).

    Args:
        env: an env with a ``Dict`` observation space holding ``keys`` as uint8 ``(H, W, 3)`` images.
        encoder: the frozen encoder (its ``feature_space`` and ``encode``).
        keys: the image keys to encode; the other keys pass unchanged.
    """

    def __init__(self, env: gym.Env, encoder: FrameEncoder, keys: Sequence[str]) -> None:
        super().__init__(env)
        self.encoder, self.keys = encoder, tuple(keys)
        self.observation_space = feature_observation_space(env.observation_space, encoder, self.keys)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        batch = encode_frames(self.encoder, {k: np.asarray(observation[k])[None] for k in self.keys}, self.keys)
        return {**observation, **{k: v[0] for k, v in batch.items()}}
