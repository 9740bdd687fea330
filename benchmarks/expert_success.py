"""Success rate of the scripted experts per task and noise level (seeded episodes).

    python benchmarks/expert_success.py                       # 100 episodes, default noise levels
    python benchmarks/expert_success.py --tasks Push PickCube --noise 0 0.3 0.6 --episodes 50
    python benchmarks/expert_success.py --env gym_hil/PandaPickCubeBase-v0 \
        --env-kwargs '{"random_block_position": true}' --episodes 50   # a foreign env's registered expert

Episode ``i`` uses ``env.reset(seed=i)`` and the expert's noise generator is seeded with
``--expert-seed``, so a row is reproducible (numpy's global generator is seeded with ``i`` too: gym-hil
draws its block position from it). Prints a markdown table, the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium as gym
import numpy as np

import hilrl.envs
from machine import describe_machine  # noqa: E402
from hilrl.feedback import make_expert


def expert_success(task: str, noise: float, episodes: int, expert_seed: int = 0,
                   env_kwargs: dict | None = None) -> tuple[float, float]:
    """(success rate, mean episode length) of the expert over seeds ``0..episodes-1``. ``task``: a hilrl task
    name, or a foreign gymnasium id (made through hilrl's env adapter with ``env_kwargs``)."""
    if task in hilrl.envs.TASKS:
        env = gym.make(hilrl.envs.ENV_IDS[task])
    else:
        from hilrl.config import EnvConfig
        from hilrl.envs.make import make_env

        env = make_env(EnvConfig(id=task, kwargs=env_kwargs or {}))
    expert = make_expert(env, noise=noise, seed=expert_seed)
    successes, lengths = 0, []
    for episode in range(episodes):
        np.random.seed(episode)
        obs, info = env.reset(seed=episode)
        expert.reset()
        steps = 0
        while True:
            obs, _, terminated, truncated, info = env.step(expert(obs))
            steps += 1
            if terminated or truncated:
                break
        successes += bool(info["is_success"])
        lengths.append(steps)
    env.close()
    return successes / episodes, float(np.mean(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(hilrl.envs.TASKS), choices=list(hilrl.envs.TASKS))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.1, 0.18, 0.2, 0.27, 0.3, 0.4, 0.5])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--expert-seed", type=int, default=0)
    parser.add_argument("--env", help="a foreign gymnasium id with a registered expert (replaces --tasks), e.g. "
                        "gym_hil/PandaPickCubeBase-v0")
    parser.add_argument("--env-kwargs", default="{}", help="JSON keyword arguments of the foreign env")
    args = parser.parse_args()
    env_kwargs = json.loads(args.env_kwargs)
    if args.env:
        args.tasks = [args.env]

    start = time.perf_counter()
    print("| task | noise | success | mean episode length |")
    print("|---|---|---|---|")
    for task in args.tasks:
        for noise in args.noise:
            rate, length = expert_success(task, noise, args.episodes, args.expert_seed, env_kwargs)
            print(f"| {task} | {noise:.2f} | {rate:.2f} | {length:.1f} |", flush=True)
    print(f"\n{args.episodes} episodes per row (seeds 0..{args.episodes - 1}), expert seed {args.expert_seed}, "
          f"{time.perf_counter() - start:.0f} s total")
    print("command: python " + " ".join(sys.argv))
    print("machine: " + describe_machine())


if __name__ == "__main__":
    main()
