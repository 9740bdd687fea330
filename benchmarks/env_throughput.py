"""Policy-step throughput of the hilrl arm tasks against a raw MuJoCo loop on the same model.

    python benchmarks/env_throughput.py                 # all tasks, state and 2 x 128 px cameras
    python benchmarks/env_throughput.py --tasks Reach --steps 1000 --image-steps 200

For each task and observation mode the env runs ``steps`` policy steps with random actions
(no resets: no success termination, no time limit) while recording ``data.ctrl``. Every
``--chunk`` steps the baseline replays those controls from the same state on its own ``MjData``
of the *same* ``MjModel``: per policy step one ``mj_step(model, data, nstep=substeps)`` and,
in image mode, the same two renders with the same renderer settings. So the ratio
``env / raw`` is the fraction of the physics-and-rendering speed that survives our Python layer
(action scaling, IK, observations, reward). Best of ``--repeats`` runs, interleaved so both see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

import hilrl.envs  # noqa: E402
from machine import describe_machine  # noqa: E402
from hilrl.envs.arm_env import STATE_SPEC  # noqa: E402
from hilrl.envs.rendering import CameraRenderer  # noqa: E402

CAMERAS = ("front", "wrist")


def measure(env, actions: np.ndarray, cameras: tuple[str, ...], image_size: int, chunk: int) -> tuple[float, float]:
    """Seconds spent by ``env.step`` and by the raw loop over the same ``len(actions)`` policy steps.

    The two alternate every ``chunk`` steps: the raw loop restarts from the env's state at the
    start of the chunk and replays the controls the env produced, so both do identical physics
    (MuJoCo is deterministic) under the same machine load (this machine is shared).
    """
    model = env.model
    raw = mujoco.MjData(model)
    renderer = CameraRenderer(model, image_size, image_size) if cameras else None
    for cam in cameras:  # warm up the fresh GL context (the env's renderer warms up in reset)
        renderer.render(raw, cam)
    substeps = env.substeps
    ctrls = np.empty((chunk, model.nu))
    env.reset(seed=0)
    env_time = raw_time = 0.0
    for first in range(0, len(actions), chunk):
        block = actions[first : first + chunk]
        state = env.get_state()
        start = time.perf_counter()
        for i, action in enumerate(block):
            env.step(action)
            ctrls[i] = env.data.ctrl  # recording costs ~1 us; kept in the timed loop to be conservative
        env_time += time.perf_counter() - start

        mujoco.mj_setState(model, raw, state, STATE_SPEC)
        mujoco.mj_forward(model, raw)
        start = time.perf_counter()
        for ctrl in ctrls[: len(block)]:
            raw.ctrl[:] = ctrl
            mujoco.mj_step(model, raw, nstep=substeps)
            for cam in cameras:
                renderer.render(raw, cam)
        raw_time += time.perf_counter() - start
    if renderer is not None:
        renderer.close()
    return env_time, raw_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(hilrl.envs.TASKS), choices=list(hilrl.envs.TASKS))
    parser.add_argument("--steps", type=int, default=2000, help="policy steps per run in state mode")
    parser.add_argument("--image-steps", type=int, default=300, help="policy steps per run with cameras")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=50, help="policy steps per env/raw alternation")
    args = parser.parse_args()

    rows = []
    for task in args.tasks:
        for cameras, steps in (((), args.steps), (CAMERAS, args.image_steps)):
            env = hilrl.envs.TASKS[task](
                cameras=cameras, image_size=args.image_size, terminate_on_success=False, max_episode_steps=10**9
            )
            rng = np.random.default_rng(0)
            actions = rng.uniform(-1, 1, (steps, *env.action_space.shape)).astype(np.float32)
            env_best = raw_best = np.inf
            for _ in range(args.repeats):
                env_time, raw_time = measure(env, actions, cameras, args.image_size, args.chunk)
                env_best, raw_best = min(env_best, env_time), min(raw_best, raw_time)
            env.close()
            mode = "state" if not cameras else f"2 cams {args.image_size}px"
            rows.append((task, mode, env.substeps, steps / raw_best, steps / env_best))
            print(f"  measured {task} / {mode}", file=sys.stderr, flush=True)

    print("| task | obs | substeps | raw loop (steps/s) | env.step (steps/s) | env / raw |")
    print("|---|---|---|---|---|---|")
    for task, mode, substeps, raw, ours in rows:
        print(f"| {task} | {mode} | {substeps} | {raw:.0f} | {ours:.0f} | {ours / raw:.2f} |")
    print("\nraw loop: same MjModel, same controls, mj_step(nstep=substeps) (+ the same renders) per policy step")
    print("command: python " + " ".join(sys.argv))
    print("machine: " + describe_machine(f"mujoco {mujoco.__version__}"))


if __name__ == "__main__":
    main()
