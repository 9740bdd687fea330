"""Train the reference critic Q_ref for RLIF's value-based interventionist (Luo et al., RLIF; pd-perry/RLIF).

The recipe is :func:`hilrl.runtime.reference.reference_experiment`: SAC from expert demos
on the task's dense reward (a task with a ready RLPD experiment, PickCube: the one of
``sim_configs/pick_cube_rlpd.yaml``, kept in the package, runs that one); the run folder is the artifact
``intervention.q_ref`` points at. ``hilrl train`` builds a missing one itself before the run starts
(:func:`hilrl.runtime.train.ensure_reference_critic`); rebuild by hand with:

    python benchmarks/train_reference_critic.py --task Push --steps 8000 --out artifacts/qref_push
    python benchmarks/train_reference_critic.py --task PickCube --steps 20000 --out artifacts/qref_pickcube
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hilrl.runtime.reference import OBS_KEYS, reference_experiment
from hilrl.runtime.train import ensure_reference_critic

__all__ = ["OBS_KEYS", "ensure_reference", "reference_config"]  # what rlif_vs_dagger.py and older scripts import
reference_config = reference_experiment


def ensure_reference(task: str, steps: int, out: Path, seed: int = 0) -> Path:
    """Train the reference unless ``out`` already holds a finished run; returns ``out``."""
    return ensure_reference_critic(out, task, steps, seed)


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
