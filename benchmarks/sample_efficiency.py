"""Env steps to 90% eval success from 10 expert demos: hilrl RLPD vs SB3 SAC on the dense reward.

Every run goes through `hilrl train` (the library entry) with evaluation every ``--eval-every`` env
steps on the validation seeds; the first evaluation at or above ``--target`` gives the figure, and
"final" is the run's policy (keep_best) on the unseen test seeds. Each seed of each learner is one
job, run through :func:`hilrl.runtime.sweep.run_grid` (``hilrl sweep``'s runner): ``--workers`` side by side
(1 torch thread each) on a local process pool, or ``--backend ray`` one Ray task per job on ``--address`` /
``RAY_ADDRESS`` (else a local Ray of ``--workers`` CPUs); run again with the same ``--out``, finished jobs are
skipped (their saved rows printed) and a failed one is retried. ``--set KEY=VALUE`` changes our config
(dotted keys, YAML values) for A/B runs, e.g. ``--set demos.keep_after_success=null``.

Also printed: what the demo buffer holds, rows per phase of the task (PickCube: reach, grasp and
carry, at the goal) for the whole demos and for the cut ones; and written: ``q_vs_return.png``, the
critic's Q(s0, a0) of the last online episodes against their discounted return G0 over training
(TensorBoard ``value/online_*``), one panel per seed.

    python benchmarks/sample_efficiency.py --seeds 0 1 2 --steps 20000 --eval-every 2500 --workers 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from grids import add_grid_options, end_grid
from machine import describe_machine

from hilrl.runtime.sweep import GridCell, run_grid

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "sim_configs/pick_cube_few_demos.yaml"


def scalars(tb_dir: Path, *tags: str) -> list[list[tuple[int, float]]]:
    """``(step, value)`` series of each tag (empty where the run logged none), read in one pass."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Tags().get("scalars", [])
    return [[(e.step, e.value) for e in events.Scalars(tag)] if tag in logged else [] for tag in tags]


def set_key(raw: dict, dotted: str) -> None:
    key, _, value = dotted.partition("=")
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


def configs(args: argparse.Namespace) -> dict[str, dict]:
    ours = yaml.safe_load(args.config.read_text())
    ours["demos"]["episodes"] = args.demos
    for change in args.set:
        set_key(ours, change)
    # the same task, reward and episode ends for both: only the learner (and ours' demos) differ
    sb3 = {"env": dict(ours["env"]), "demos": {"episodes": 0},
           "algo": {"name": "sb3.sac", "obs_keys": ours["algo"].get("obs_keys")}}
    learners = {f"hilrl RLPD + {args.demos} demos": ours}
    if args.sb3:
        learners["SB3 SAC, dense reward"] = sb3
    for raw in learners.values():
        raw["train"] = {**raw.get("train", {}), "steps": args.steps, "eval_every": args.eval_every,
                        "eval_episodes": args.eval_episodes, "checkpoint_every": args.steps, "video": False}
        if raw["algo"]["name"] != "sac":
            raw["train"].pop("keep_best", None)
    return learners


def run_one(job: tuple) -> dict:
    import torch

    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    name, raw, seed, out, target = job
    raw = {**raw, "train": {**raw["train"], "seed": seed}}
    started = time.perf_counter()
    result = train(validate_config(raw), out, show_progress=False)
    (evals,) = scalars(Path(out) / "tb", "eval/success_rate")
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    return {"learner": name, "seed": seed, "out": out, "evals": evals, "test": result.success_rate,
            "reached": next((step for step, value in evals if value >= target), None),
            "seconds": time.perf_counter() - started, "env_steps": metrics.get("env_steps")}


def phase_rows(episodes: list) -> dict[str, int]:
    """Demo rows per phase of PickCube (from the stored reward terms)."""
    phases = {"reach": 0, "grasp and carry": 0, "at the goal": 0}
    for episode in episodes:
        success = episode.reward_terms["success"] > 0.5
        grasped = episode.reward_terms["grasped"] > 0.5
        phases["at the goal"] += int(success.sum())
        phases["grasp and carry"] += int((grasped & ~success).sum())
        phases["reach"] += int((~grasped & ~success).sum())
    return phases


def composition(run_dir: Path, keep: int | None) -> None:
    from hilrl.data.hdf5 import DemoFile

    with DemoFile(run_dir / "demos.hdf5") as file:
        whole = [file.episode(name) for name in file.demo_names]
    if "grasped" not in whole[0].reward_terms:
        return
    rows = [("whole demos", phase_rows(whole))]
    if keep is not None:
        rows.append((f"cut {keep} steps after success", phase_rows([e.cut_after_success(keep) for e in whole])))
    if (run_dir / "bc_rollouts.hdf5").exists():  # demos.bc_rollouts: the BC policy's episodes join them
        with DemoFile(run_dir / "bc_rollouts.hdf5") as file:
            rollouts = [file.episode(name) for name in file.demo_names]
        if keep is not None:
            rollouts = [e.cut_after_success(keep) for e in rollouts]
        success = np.mean([e.success for e in rollouts])
        rows.append((f"+ {len(rollouts)} BC rollouts ({success:.0%} successful)",
                     {k: rows[-1][1][k] + v for k, v in phase_rows(rollouts).items()}))
    print(f"\ndemo buffer, {len(whole)} demos: rows per phase")
    print("| demos | " + " | ".join(rows[0][1]) + " | total |")
    print("|---|" + "---|" * (len(rows[0][1]) + 1))
    for name, phases in rows:
        print(f"| {name} | " + " | ".join(str(v) for v in phases.values()) + f" | {sum(phases.values())} |")


def plot_q_vs_return(results: list[dict], path: Path) -> None:
    """One panel per seed: Q(s0, a0) (red) and G0 (blue) against env steps, drawn with OpenCV."""
    import cv2

    panels = []
    for r in results:
        q, g = scalars(Path(r["out"]) / "tb", "value/online_q_start", "value/online_return_start")
        if not q:
            continue
        w, h, pad = 480, 300, 40
        img = np.full((h, w, 3), 255, np.uint8)
        steps = np.array([s for s, _ in q] + [s for s, _ in g], float)
        values = np.array([v for _, v in q] + [v for _, v in g], float)
        lo, hi = min(values.min(), 0.0), max(values.max(), 1e-6)
        x0, x1 = steps.min(), max(steps.max(), steps.min() + 1)

        def point(step: float, value: float) -> tuple[int, int]:
            return (int(pad + (step - x0) / (x1 - x0) * (w - 2 * pad)),
                    int(h - pad - (value - lo) / (hi - lo) * (h - 2 * pad)))

        cv2.rectangle(img, (pad, pad), (w - pad, h - pad), (0, 0, 0), 1)
        for series, colour in ((q, (0, 0, 220)), (g, (220, 80, 0))):
            pts = np.array([point(s, v) for s, v in series], np.int32)
            cv2.polylines(img, [pts], False, colour, 2)
        cv2.putText(img, f"seed {r['seed']}: Q(s0,a0) red, G0 blue", (pad, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1)
        cv2.putText(img, f"{hi:.0f}", (2, pad + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{lo:.0f}", (2, h - pad), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"env steps {int(x0)}..{int(x1)}", (pad, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1)
        panels.append(img)
    if panels:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.vstack(panels))
        print(f"\nQ vs G0 plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=OURS, help="our learner's config (10 demos)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", type=int, default=10, help="expert demos for ours (the issue: 10)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change our config")
    parser.add_argument("--no-sb3", dest="sb3", action="store_false", help="skip the SB3 baseline")
    add_grid_options(parser, workers=2, what="jobs")
    parser.add_argument("--out", type=Path, default=Path("runs/sample_efficiency"))
    args = parser.parse_args()

    learners = configs(args)
    keep = next(iter(learners.values()))["demos"].get("keep_after_success")
    cells = [GridCell(run_one, ((name, raw, seed, out, args.target),), out, name, seed)
             for name, raw in learners.items() for seed in args.seeds
             for out in [str(args.out / f"{name.split()[0].lower()}_s{seed}")]]
    started = time.perf_counter()
    records = run_grid(cells, args.backend, args.workers, args.address)
    wall = time.perf_counter() - started
    results = [r for r in records if r["status"] != "failed"]

    print(f"| learner | seed | env steps to {args.target:.0%} eval success | eval success per {args.eval_every} steps "
          "| final (test seeds) | wall s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        curve = "/".join(f"{v:.0%}" for _, v in r["evals"])
        reached = r["reached"] if r["reached"] is not None else f"not within {args.steps}"
        print(f"| {r['learner']} | {r['seed']} | {reached} | {curve} | {r['test']:.0%} | {r['seconds']:.0f} |")
    for name in dict.fromkeys(r["learner"] for r in results):
        group = [r for r in results if r["learner"] == name]
        tests = np.array([r["test"] for r in group])
        print(f"| {name} | mean | {sum(r['reached'] is not None for r in group)}/{len(group)} seeds reached | | "
              f"{tests.mean():.0%} ± {tests.std():.0%} | {np.mean([r['seconds'] for r in group]):.0f} |")
    ours = [r for r in results if r["learner"].startswith("hilrl")]
    if ours:
        composition(Path(ours[0]["out"]), keep)
        plot_q_vs_return(ours, args.out / "q_vs_return.png")
    print(f"\nwall time of the whole benchmark: {wall:.0f} s with {args.workers} workers"
          + (" (Ray)" if args.backend == "ray" else ""))
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", describe_machine())
    end_grid(records)


if __name__ == "__main__":
    main()
