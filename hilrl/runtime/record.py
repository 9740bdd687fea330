"""Record demonstrations from a device (the scripted expert or a person's teleop device) into a robomimic-layout file.

With a human device (``keyboard``, ``gamepad``, ``spacemouse``, or a plugin's; see ``hilrl.feedback.teleop``)
the device acts on every step, in real time at the env's ``control_hz``; its ``success``/``failure``
buttons end the episode with that label and ``rerecord`` discards the episode in progress, which
is then recorded again with the same seed.
"""

from __future__ import annotations

import os
from typing import Any

from hilrl.config import EnvConfig
from hilrl.data.hdf5 import DemoWriter
from hilrl.envs.make import make_env
from hilrl.feedback.experts import make_expert
from hilrl.feedback.teleop import TeleopDevice, human_device_names, make_device, teleop_episode
from hilrl.runtime.progress import make_progress
from hilrl.runtime.rollout import RolloutStats, run_episode


def device_names() -> tuple[str, ...]:
    """Who can record: ``expert`` (the scripted one), or a person on a registered device (plugins' too)."""
    return ("expert", *human_device_names())


def record_demos(
    env_config: EnvConfig,
    out: str | os.PathLike,
    episodes: int,
    device: str | TeleopDevice = "expert",
    noise: float = 0.0,
    seed: int = 0,
    only_successes: bool = False,
    append: bool = False,
    show_progress: bool = True,
    realtime: bool = True,
) -> RolloutStats:
    """Record ``episodes`` episodes; each is written and flushed as soon as it ends.

    Episode ``i`` is reset with seed ``seed + i``. With ``only_successes`` failed
    episodes are not written (they are still counted in the returned stats).
    ``device`` is a name from :func:`device_names` or an open :class:`TeleopDevice` (the caller closes it).
    ``realtime`` paces a human device at the env's ``control_hz``.
    """
    if isinstance(device, str) and device not in device_names():
        from hilrl.errors import HilrlError

        raise HilrlError(f"unknown device {device!r}; allowed: {', '.join(device_names())}")
    if env_config.foreign and device != "expert" and env_config.action_map is None:
        from hilrl.errors import HilrlError

        raise HilrlError(f"a person drives {env_config.id!r} through env.action_map: set which of its action "
                         "dimensions are xyz, rotation and gripper (e.g. action_map: {xyz: [0, 1, 2], gripper: 6, "
                         "gripper_sign: -1})")
    if isinstance(device, str) and device != "expert":
        teleop, owned = make_device(device), True  # opened first: a missing device fails before the env starts
    else:
        teleop, owned = (None if device == "expert" else device), False
    device_name = device if isinstance(device, str) else device.name
    # a person recording in simulation needs to see the arm: a viewer window when there is a display
    viewer = teleop is not None and device_name != "expert" and not env_config.remote and bool(os.environ.get("DISPLAY"))
    try:
        env = make_env(env_config, **({"render_mode": "human"} if viewer else {}))
    except BaseException:
        if owned:
            teleop.close()
        raise
    expert = make_expert(env, noise=noise, seed=seed) if teleop is None else None
    pace_hz = getattr(env.unwrapped, "control_hz", None) if realtime else None
    stats = RolloutStats.empty()
    env_kwargs: dict[str, Any] = env_config.file_kwargs()
    try:
        with DemoWriter(out, env_config.id, env_kwargs, append=append,
                        env_config=env_config.model_dump(mode="json") if env_config.foreign else None) as writer, \
                make_progress(not show_progress) as bar:
            task = bar.add_task(f"record {env_config.id}", total=episodes, stats="")
            for i in range(episodes):
                if teleop is None:
                    expert.reset()
                    episode = run_episode(env, expert, seed=seed + i)
                else:
                    episode = None
                    while episode is None:  # re-record: the same seed again
                        episode = teleop_episode(env, teleop, seed=seed + i, pace_hz=pace_hz)
                episode.attrs["device"] = device_name
                if teleop is None:
                    episode.attrs["noise"] = float(noise)
                stats.add(episode)
                if episode.success or not only_successes:
                    writer.add(episode)
                bar.update(task, advance=1, stats=f"success {stats.success_rate:.0%} written {writer.num_demos}")
    finally:
        env.close()
        if owned:
            teleop.close()
    return stats

