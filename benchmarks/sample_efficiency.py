"""Env steps to reach 90% eval success: RLPD + 10 expert demos (ours) vs SB3 SAC on the dense reward.

Both are run through `hilrl train` with evaluation every ``--eval-every`` env steps;
the first evaluation at or above ``--target`` gives the figure (the issue's goal for
state PickCube: <= 20k steps). Prints a table with the command and the machine.

    python benchmarks/sample_efficiency.py --task PickCube --steps 40000 --eval-every 2000
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hilrl.config import validate_config
from hilrl.runtime.train import train
from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def first_step_at(tb_dir: Path, tag: str, target: float) -> int | None:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return None
    return next((e.step for e in events.Scalars(tag) if e.value >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="PickCube")
    parser.add_argument("--steps", type=int, default=40000)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=int, default=10, help="expert demos for ours (the issue: 10)")
    parser.add_argument("--out", type=Path, default=Path("runs/sample_efficiency"))
    args = parser.parse_args()

    ours = yaml.safe_load((ROOT / "sim_configs/pick_cube_rlpd.yaml").read_text())
    ours["env"]["id"] = f"hilrl/{args.task}-v0"
    ours["demos"]["episodes"] = args.demos
    # the same task, reward and episode ends for both: only the learner (and ours' demos) differ
    sb3 = {"env": dict(ours["env"]), "demos": {"episodes": 0},
           "algo": {"name": "sb3.sac", "obs_keys": ours["algo"].get("obs_keys")}}
    rows = []
    for name, raw, tag in ((f"hilrl RLPD + {args.demos} demos", ours, "eval/success_rate"),
                           ("SB3 SAC, dense reward", sb3, "eval/success_rate")):
        raw["train"] = {**raw.get("train", {}), "steps": args.steps, "seed": args.seed, "eval_every": args.eval_every,
                        "eval_episodes": 20, "checkpoint_every": args.steps, "video": False}
        out = args.out / name.split()[0].lower()
        started = time.perf_counter()
        result = train(validate_config(raw), out, show_progress=False)
        reached = first_step_at(out / "tb", tag, args.target)
        rows.append((name, reached, result.success_rate, time.perf_counter() - started))

    print(f"| learner | env steps to {args.target:.0%} eval success | final success | wall s |")
    print("|---|---|---|---|")
    for name, reached, final, seconds in rows:
        print(f"| {name} | {reached if reached is not None else f'not within {args.steps}'} | {final:.2f} | "
              f"{seconds:.0f} |")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", describe_machine())


if __name__ == "__main__":
    main()
