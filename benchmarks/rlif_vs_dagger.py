"""RLIF vs HIL-SERL-style vs HG-DAgger vs DAgger vs BC vs SAC (dense), with experts of two qualities.

Reproduces the comparison of the RLIF paper (Luo et al. 2023, arXiv:2311.12996, pd-perry/RLIF: its margin over
DAgger grows as the expert worsens) on our tasks, state observations. For every
task x expert quality x method x seed it runs `hilrl train` (the library entry)
and prints final eval success as mean +- std over seeds, env steps, intervention
counts and wall time. Expert qualities come from ``NOISE_FOR_SUCCESS`` (noise
giving about 90% and 40% success). The value-based interventionist needs a
reference critic per task (benchmarks/train_reference_critic.py; trained here
when missing).

The runs go through :func:`hilrl.runtime.sweep.run_grid` (``hilrl sweep``'s runner; each cell is one method's
config, as BC and DAgger are not one config file's runs): ``--workers`` at once on a local process pool, or
``--backend ray`` one Ray task per run on ``--address`` / ``RAY_ADDRESS`` (else a local Ray of ``--workers``
CPUs). Run again with the same ``--out``: finished runs are skipped (their saved rows printed), failed ones retried.

    python benchmarks/rlif_vs_dagger.py --tasks Push PickCube --seeds 0 1 2 --steps 20000 --workers 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from grids import add_grid_options, end_grid
from machine import describe_machine
from train_reference_critic import OBS_KEYS, ensure_reference

from hilrl.runtime.sweep import GridCell, run_grid

# the RL methods learn with the few-demo recipe that learns PickCube from 10 demos (its algo section, and its
# demo cut and BC rollouts); not its add_successes, which would read the task's success flag that RLIF discards
FEW_DEMOS = yaml.safe_load((Path(__file__).resolve().parents[1] / "sim_configs/pick_cube_few_demos.yaml").read_text())
METHODS = ("rlif", "hil_serl", "hg_dagger", "dagger", "bc", "sac_dense")


def method_config(method: str, task: str, noise: float, steps: int, seed: int, q_ref: str) -> dict:
    env = {"id": f"hilrl/{task}-v0", "relative_positions": True}
    demos = {"episodes": 10, "noise": noise}
    train = {"steps": steps, "seed": seed, "learning_starts": 500, "eval_episodes": 50,
             "checkpoint_every": steps, "video": False}
    sac = {**FEW_DEMOS["algo"], "obs_keys": OBS_KEYS}
    rl_demos = {**demos, "keep_after_success": FEW_DEMOS["demos"]["keep_after_success"],
                "bc_rollouts": FEW_DEMOS["demos"]["bc_rollouts"]}
    value_gate = {"source": "value", "q_ref": q_ref, "expert_noise": noise, "beta": 0.97}
    bc_like = {"obs_keys": OBS_KEYS, "round_steps": max(steps // 10, 100), "updates_per_round": 500}
    if method == "rlif":
        return {"env": env, "demos": rl_demos, "algo": {**sac, "backup_entropy": False},
                "intervention": {**value_gate, "learn_from": "rlif"}, "train": train}
    if method == "hil_serl":
        return {"env": {**env, "reward_type": "sparse"}, "demos": rl_demos, "algo": sac,
                "intervention": {**value_gate, "learn_from": "hil_serl"}, "train": train}
    if method == "hg_dagger":
        return {"env": env, "demos": demos, "algo": {"name": "hg_dagger", **bc_like},
                "intervention": {"source": "distance", "threshold": 1.0, "expert_noise": noise}, "train": train}
    if method == "dagger":
        return {"env": env, "demos": demos, "algo": {"name": "dagger", **bc_like},
                "intervention": {"expert_noise": noise}, "train": train}
    if method == "bc":
        return {"env": env, "demos": {**demos, "episodes": 50}, "algo": {"name": "bc", "obs_keys": OBS_KEYS},
                "train": {**train, "steps": 3000}}
    if method == "sac_dense":
        return {"env": {**env, "reward_type": "dense_cost"}, "demos": {"episodes": 0}, "algo": sac, "train": train}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(job: tuple) -> dict:
    import torch

    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    method, task, quality, noise, steps, seed, q_ref, out = job
    started = time.perf_counter()
    result = train(validate_config(method_config(method, task, noise, steps, seed, q_ref)), out, show_progress=False)
    import json

    metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"method": method, "task": task, "quality": quality, "seed": seed, "success": result.success_rate,
            "env_steps": metrics.get("env_steps", 0), "interventions": metrics.get("interventions", 0),
            "seconds": time.perf_counter() - started}


def main() -> None:
    from hilrl.feedback.experts import NOISE_FOR_SUCCESS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["Push", "PickCube"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--reference-steps", type=int, default=8000, help="env steps of the reference critic's SAC "
                        "(the value gate's Q_ref; the configs' q_ref_steps default)")
    parser.add_argument("--experts", nargs="+", type=float, default=None, metavar="SUCCESS",
                        help="expert qualities to run, by their success (keys of NOISE_FOR_SUCCESS, e.g. 0.4); "
                        "default all")
    add_grid_options(parser, workers=1)
    parser.add_argument("--out", type=Path, default=Path("runs/rlif_vs_dagger"))
    args = parser.parse_args()

    for task in args.tasks:
        unknown = sorted(set(args.experts or ()) - set(NOISE_FOR_SUCCESS[task]))
        if unknown:
            parser.error(f"--experts {unknown}: {task} has experts of success {sorted(NOISE_FOR_SUCCESS[task])}")
    qualities = {task: sorted(args.experts or NOISE_FOR_SUCCESS[task], reverse=True) for task in args.tasks}
    cells = []
    for task in args.tasks:
        q_ref = str(ensure_reference(task, args.reference_steps, Path("artifacts") / f"qref_{task.lower()}"))
        for quality in qualities[task]:
            noise = NOISE_FOR_SUCCESS[task][quality]
            for method in args.methods:
                for seed in args.seeds:
                    out = str(args.out / f"{task}_{quality:.0%}_{method}_s{seed}")
                    cells.append(GridCell(run_one, ((method, task, quality, noise, args.steps, seed, q_ref, out),),
                                          out, f"{task} {quality:.0%} {method}", seed))
    records = run_grid(cells, args.backend, args.workers, args.address)
    rows = [r for r in records if r["status"] != "failed"]

    print(f"| task | expert success | method | final success (mean ± std over {len(args.seeds)} seeds) | "
          "env steps | interventions | wall s |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks:
        for quality in qualities[task]:
            for method in args.methods:
                group = [r for r in rows if (r["task"], r["quality"], r["method"]) == (task, quality, method)]
                if not group:  # every seed failed: named below
                    continue
                success = np.array([r["success"] for r in group])
                print(f"| {task} | {quality:.0%} | {method} | {success.mean():.2f} ± {success.std():.2f} | "
                      f"{int(np.mean([r['env_steps'] for r in group]))} | "
                      f"{int(np.mean([r['interventions'] for r in group]))} | "
                      f"{np.mean([r['seconds'] for r in group]):.0f} |")
    if {"rlif", "hg_dagger"} <= set(args.methods):  # the paper's pattern: RLIF's margin grows as the expert worsens
        print("\n| task | expert success | RLIF - HG-DAgger (mean success) | seeds (rlif / hg_dagger) |")
        print("|---|---|---|---|")
        for task in args.tasks:
            for quality in qualities[task]:
                per = {m: sorted((r["seed"], r["success"]) for r in rows
                                 if (r["task"], r["quality"], r["method"]) == (task, quality, m))
                       for m in ("rlif", "hg_dagger")}
                margin = np.mean([s for _, s in per["rlif"]]) - np.mean([s for _, s in per["hg_dagger"]])
                seeds = " / ".join(", ".join(f"{s:.2f}" for _, s in per[m]) for m in ("rlif", "hg_dagger"))
                print(f"| {task} | {quality:.0%} | {margin:+.2f} | {seeds} |")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", describe_machine())
    end_grid(records)


if __name__ == "__main__":
    main()
