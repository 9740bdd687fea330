"""Train the reference critic Q_ref for RLIF's value-based interventionist (ALGORITHMS.md, "RLIF").

RLIF's Q_ref is a critic ensemble from an RLPD run on the task's own reward. This
script trains our SAC on the task's dense reward from expert demos and keeps the
run folder as the artifact; `intervention.q_ref` points at it. Rebuild with:

    python benchmarks/train_reference_critic.py --task Push --steps 20000 --out artifacts/qref_push
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hilrl.config import validate_config
from hilrl.runtime.train import train

OBS_KEYS = ["ee_pos", "gripper", "object"]


def reference_config(task: str, steps: int, seed: int = 0) -> dict:
    return {
        "env": {"id": f"hilrl/{task}-v0", "reward_type": "dense", "terminate_on_success": False},
        "demos": {"episodes": 10},
        "algo": {"name": "sac", "num_critics": 10, "utd": 2, "gamma": 0.97, "init_temperature": 0.05,
                 "obs_keys": OBS_KEYS},
        "train": {"steps": steps, "seed": seed, "learning_starts": 500, "eval_episodes": 20,
                  "checkpoint_every": steps, "video": False},
    }


def ensure_reference(task: str, steps: int, out: Path, seed: int = 0) -> Path:
    """Train the reference unless ``out`` already holds a finished run; returns ``out``."""
    if not (out / "metrics.json").exists():
        train(validate_config(reference_config(task, steps, seed)), out, show_progress=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="Push")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path("artifacts") / f"qref_{args.task.lower()}"
    ensure_reference(args.task, args.steps, out, args.seed)
    print((out / "metrics.json").read_text())
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
