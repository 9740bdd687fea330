"""Train the reference critic Q_ref for RLIF's value-based interventionist (ALGORITHMS.md, "RLIF").

RLIF's Q_ref is a critic ensemble from an RLPD run on the task's own reward. This
script trains our SAC on the task's dense reward from expert demos and keeps the
run folder as the artifact; `intervention.q_ref` points at it. A task with a ready
RLPD experiment in ``sim_configs/`` (PickCube: ``pick_cube_rlpd.yaml``) uses it;
the others use the generic config below. Rebuild with:

    python benchmarks/train_reference_critic.py --task Push --steps 8000 --out artifacts/qref_push
    python benchmarks/train_reference_critic.py --task PickCube --steps 20000 --out artifacts/qref_pickcube
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml

from hilrl.config import validate_config
from hilrl.runtime.train import train

OBS_KEYS = ["ee_pos", "gripper", "object", "tcp_to_object", "object_to_goal"]  # the last two: env.relative_positions
ROOT = Path(__file__).resolve().parents[1]
RLPD_CONFIGS = {"PickCube": ROOT / "sim_configs" / "pick_cube_rlpd.yaml"}


def reference_config(task: str, steps: int, seed: int = 0) -> dict:
    if task in RLPD_CONFIGS:
        config = yaml.safe_load(RLPD_CONFIGS[task].read_text())
        config["train"].update(steps=steps, seed=seed, checkpoint_every=steps, video=False)
        return config
    return {
        # the task's dense reward as a cost, episodes ending on success: the Q_ref of "how soon will this succeed"
        "env": {"id": f"hilrl/{task}-v0", "reward_type": "dense_cost", "terminate_on_success": True,
                "relative_positions": True},
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
