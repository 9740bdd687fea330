"""Replay recorded episodes in an environment: state-exact, or open-loop from actions.

The environment is passed in (``env.unwrapped`` must offer ``set_state`` and
``get_obs``), so this module needs nothing from ``hilrl.envs``. Both replays show an
episode from its first state to its last (``T + 1`` frames for ``T`` steps), and
:class:`CaptionedFrames` makes one video of several: each frame names its episode and step,
and each episode's last frame is held, so where one ends and the next begins is plain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hilrl.data.episode import Episode
from hilrl.errors import HilrlError

FrameSink = Callable[[np.ndarray], None]


@dataclass
class ReplayResult:
    """How far a replay drifted from the recording.

    ``max_obs_error`` is the largest absolute difference over all steps and
    observation keys (images compared in pixel units); ``diverged`` says it
    exceeded the tolerance.
    """

    name: str
    mode: str
    steps: int
    max_obs_error: float
    worst_key: str
    diverged: bool


def _obs_error(recorded: dict[str, np.ndarray], t: int, replayed: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, worst_key = 0.0, ""
    for key, values in recorded.items():
        if key not in replayed:
            continue
        err = float(np.max(np.abs(values[t].astype(np.float64) - np.asarray(replayed[key], dtype=np.float64)), initial=0.0))
        if err > worst:
            worst, worst_key = err, key
    return worst, worst_key


def _require_states(episode: Episode) -> np.ndarray:
    if episode.states is None:
        raise HilrlError(f"{episode.attrs.get('name', 'episode')}: has no 'states'; only files with simulator "
                         "states can be replayed (use --mode actions for open-loop replay)")
    return episode.states


def _reset_like_recording(episode: Episode, env: gym.Env) -> None:
    """Reset with the recorded seed (wrappers require a reset before stepping or rendering)."""
    seed = episode.attrs.get("seed")
    env.reset(seed=int(seed) if seed is not None and int(seed) >= 0 else None)


def replay_states(episode: Episode, env: gym.Env, atol: float = 1e-5, on_frame: FrameSink | None = None) -> ReplayResult:
    """Set every recorded state and compare the observation the env produces with the recorded one.

    A file stores the state before each action (robomimic's ``states``), not the one the last action led to:
    that final state (a success's) is reached by executing the last action from the last stored state, and its
    observation is compared with the recorded ``next_obs`` like the others. ``on_frame`` gets ``T + 1`` frames.
    """
    states = _require_states(episode)
    _reset_like_recording(episode, env)
    base = env.unwrapped
    worst, worst_key = 0.0, ""
    for t in range(len(episode)):
        base.set_state(states[t])
        err, key = _obs_error(episode.obs, t, base.get_obs())
        if err > worst:
            worst, worst_key = err, key
        if on_frame is not None:
            on_frame(env.render())
    last = len(episode) - 1
    obs, *_ = env.step(episode.actions[last])  # from states[last], set above
    err, key = _obs_error(episode.next_obs, last, obs)
    if err > worst:
        worst, worst_key = err, key
    if on_frame is not None:
        on_frame(env.render())
    return ReplayResult(episode.attrs.get("name", ""), "states", len(episode), worst, worst_key, worst > atol)


def replay_actions(episode: Episode, env: gym.Env, atol: float = 1e-3, on_frame: FrameSink | None = None) -> ReplayResult:
    """Start from the recorded first state and execute the recorded actions open-loop.

    Divergence here is expected to grow with contact-rich tasks; the result reports it. ``on_frame`` gets
    ``T + 1`` frames: the first state, then the state after each action. An episode without states (an env
    with no simulator state to restore, e.g. a foreign non-MuJoCo one) starts from the reset with its recorded
    seed instead.
    """
    _reset_like_recording(episode, env)
    if episode.states is not None:
        env.unwrapped.set_state(episode.states[0])
    elif int(episode.attrs.get("seed", -1)) < 0:
        raise HilrlError(f"{episode.attrs.get('name', 'episode')}: has neither 'states' nor a reset seed; its start "
                         "cannot be reproduced")
    if on_frame is not None:
        on_frame(env.render())
    worst, worst_key = 0.0, ""
    steps = 0
    for t in range(len(episode)):
        obs, *_ = env.step(episode.actions[t])
        steps += 1
        err, key = _obs_error(episode.next_obs, t, obs)
        if err > worst:
            worst, worst_key = err, key
        if on_frame is not None:
            on_frame(env.render())
    return ReplayResult(episode.attrs.get("name", ""), "actions", steps, worst, worst_key, worst > atol)


class CaptionedFrames:
    """A frame sink for one video of several replayed episodes: a caption strip on every frame (the episode's
    name, its place among them, the step shown), and each episode's last frame held for ``hold_s`` seconds
    with its outcome, so that its final state is seen and the next episode's start is not mistaken for it.

    Call :meth:`start` before an episode's frames and :meth:`end` after them.

    Args:
        sink: where the captioned frames go (e.g. a :class:`~hilrl.data.video.VideoWriter`).
        fps: the video's frame rate, which ``hold_s`` is counted in.
        hold_s: how long each episode's last frame stays.
    """

    def __init__(self, sink: FrameSink, fps: float, hold_s: float = 1.0) -> None:
        self.sink, self.hold_frames = sink, max(1, round(fps * hold_s))
        self._title, self._steps, self._shown, self._outcome = "", 0, 0, ""
        self._last: np.ndarray | None = None
        self._font: object = None

    def start(self, episode: Episode, index: int, count: int) -> None:
        """The next frames are of ``episode``, number ``index`` (from 0) of ``count``."""
        self._title = f"{episode.attrs.get('name', 'episode')} ({index + 1}/{count})"
        self._steps, self._shown, self._last = len(episode), 0, None
        success = episode.attrs.get("success")
        self._outcome = "" if success is None else ("success" if bool(success) else "no success")

    def __call__(self, frame: np.ndarray) -> None:
        self._last = frame
        self.sink(self._caption(frame, f"{self._title}  step {self._shown}/{self._steps}"))
        self._shown += 1

    def end(self) -> None:
        """Hold the episode's last frame, captioned with its outcome as recorded."""
        if self._last is None:
            return
        ending = f"{self._title}  end, step {self._steps}/{self._steps}"
        ending += f": {self._outcome}" if self._outcome else ""
        held = self._caption(self._last, ending)
        for _ in range(self.hold_frames):
            self.sink(held)

    def _caption(self, frame: np.ndarray, text: str) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        image = Image.fromarray(np.asarray(frame, dtype=np.uint8))
        height = max(12, image.height // 16)
        if self._font is None:
            try:
                self._font = ImageFont.load_default(size=round(height * 0.75))
            except TypeError:  # Pillow < 10.1: one bitmap size
                self._font = ImageFont.load_default()
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, image.width, height), fill=(0, 0, 0))
        draw.text((4, height // 8), text, fill=(255, 255, 255), font=self._font)
        return np.asarray(image)
