"""hilrl RLPD vs Stable-Baselines3 SAC on foreign gymnasium envs, through hilrl's env adapter (issue 26).

gym-hil (LeRobot's HIL-SERL simulator, ``gym-hil`` 0.1.14; needs mujoco<3.9, so run this in the second venv,
``.venv-mujoco3``, that ``make install-mujoco3`` builds): the env of ``sim_configs/gym_hil_pick_cube.yaml``,
``gym_hil/PandaPickCube-v0`` (``PandaPickCubeBase-v0`` behind gym-hil's ``EEActionWrapper``: 2.5 cm steps, the
action space LeRobot trains), the block placed at random, state observations, sparse success reward
(``info["succeed"]``: the block 0.1 m up). Ours is ``sim_configs/gym_hil_pick_cube.yaml``
(RLPD: demos of hilrl's scripted pick expert mixed 50/50 into every batch) with ``--demos`` demos; the baseline is
SB3's SAC (``algo: sb3.sac``, SB3's defaults, no demos: what an SB3 user runs) on the same env, reward and episode
ends. Every run goes through ``hilrl train`` (the library entry); evaluation every ``--eval-every`` env steps on
``--eval-episodes`` validation episodes; "env steps to 90%" is the first evaluation at or above ``--target``;
"final" is the run's policy (keep_best for ours) on ``--eval-episodes`` unseen test episodes.
updates/s: gradient updates over the run's training seconds (env steps, evaluations and demos included).

``--plain ID`` adds a plain-Box gymnasium env (default ``InvertedPendulum-v5``, gymnasium's MuJoCo suite): no success
signal, so the figure there is the mean return (``--plain-target``) and both learners start without demos.

    python benchmarks/external_envs.py                                 # 3 seeds x {10, 20} demos, both learners
    python benchmarks/external_envs.py --seeds 0 --demos 20 --rows /tmp/bench/mujoco/rows.jsonl
    python benchmarks/external_envs.py --seeds 0 --demos 20 --no-sb3 --set algo.utd=8
    python benchmarks/external_envs.py --only-plain --plain InvertedPendulum-v5 --steps 10000

Each finished run is appended to ``--rows`` (JSON lines) as it ends, so a long grid that is stopped keeps what it
measured. The runs go through :func:`hilrl.runtime.sweep.run_grid` (``hilrl sweep``'s runner): ``--workers`` side
by side (1 torch thread each) on a local process pool, or ``--backend ray`` one Ray task per run on ``--address`` /
``RAY_ADDRESS`` (else a local Ray of ``--workers`` CPUs). Run again with the same ``--out``: finished runs are
skipped (their saved rows printed, not appended again), failed ones retried.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import yaml

from grids import add_grid_options, end_grid
from machine import describe_machine

from hilrl.runtime.sweep import GridCell, run_grid

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "sim_configs/gym_hil_pick_cube.yaml"


def set_key(raw: dict, dotted: str) -> None:
    """``a.b=VALUE`` (VALUE as YAML) into the nested dict ``raw``."""
    key, _, value = dotted.partition("=")
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(value)


def scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags().get("scalars", []) else []


def jobs(args: argparse.Namespace) -> list[dict]:
    """One dict per run: learner name, env name, raw config, seed, figure ('success' or 'return') and target."""
    train = {"steps": args.steps, "eval_every": args.eval_every, "checkpoint_every": args.steps, "video": False}
    out: list[dict] = []
    if not args.only_plain:
        ours = yaml.safe_load(args.config.read_text())
        for change in args.set:
            set_key(ours, change)
        env = dict(ours["env"])
        for demos in args.demos:
            raw = {**ours, "demos": {**ours.get("demos", {}), "episodes": demos},
                   "train": {**ours.get("train", {}), **train}}
            out += [{"learner": f"hilrl RLPD, {demos} demos", "env": env["id"], "raw": raw, "seed": s,
                     "figure": "success", "target": args.target} for s in args.seeds]
        if args.sb3:
            raw = {"env": env, "demos": {"episodes": 0}, "algo": {"name": "sb3.sac"},
                   "train": {"learning_starts": 500, **train}}
            out += [{"learner": "SB3 SAC, no demos", "env": env["id"], "raw": raw, "seed": s,
                     "figure": "success", "target": args.target} for s in args.seeds]
    if args.plain:
        env = {"id": args.plain}
        sac = {"env": env, "demos": {"episodes": 0}, "algo": {"name": "sac", "num_critics": 2, "utd": 1},
               "train": {"learning_starts": 1000, **train}}
        sb3 = {"env": env, "demos": {"episodes": 0}, "algo": {"name": "sb3.sac"},
               "train": {"learning_starts": 1000, **train}}
        for name, raw in (("hilrl SAC", sac), ("SB3 SAC", sb3)):
            out += [{"learner": name, "env": args.plain, "raw": raw, "seed": s, "figure": "return",
                     "target": args.plain_target} for s in args.seeds]
    for job in out:
        job["raw"]["train"]["eval_episodes"] = args.eval_episodes
        if job["raw"]["algo"]["name"] != "sac":
            job["raw"]["train"].pop("keep_best", None)
        slug = job["learner"].split(",")[0].replace(" ", "_").lower()
        demos = job["raw"]["demos"]["episodes"]
        job["out"] = str(args.out / f"{job['env'].replace('/', '_')}_{slug}_d{demos}_s{job['seed']}")
    return out


def run_one(job: dict) -> dict:
    import numpy as np
    import torch

    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    np.random.seed(job["seed"])  # gym-hil draws a random block position (when asked) from numpy's global generator
    raw = {**job["raw"], "train": {**job["raw"]["train"], "seed": job["seed"]}}
    started = time.perf_counter()
    result = train(validate_config(raw), job["out"], show_progress=False)
    seconds = time.perf_counter() - started
    metrics = json.loads((Path(job["out"]) / "metrics.json").read_text())
    tag = "eval/success_rate" if job["figure"] == "success" else "eval/mean_return"
    evals = scalars(Path(job["out"]) / "tb", tag)
    final = result.success_rate if job["figure"] == "success" else result.mean_return
    train_seconds = metrics.get("train_seconds_this_session") or seconds
    row = {"learner": job["learner"], "env": job["env"], "seed": job["seed"], "figure": job["figure"],
           "evals": evals, "final": final,
           # TensorBoard keeps float32: 0.9 reads back as 0.89999998
           "reached": next((s for s, v in evals if v >= job["target"] - 1e-6), None),
           "seconds": seconds, "env_steps": metrics.get("env_steps"), "updates": metrics.get("updates"),
           "updates_per_s": (metrics.get("updates") or 0) / max(train_seconds, 1e-9), "out": job["out"]}
    if job.get("rows"):
        with open(job["rows"], "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def table(results: list[dict], args: argparse.Namespace) -> None:
    for env in dict.fromkeys(r["env"] for r in results):
        group = [r for r in results if r["env"] == env]
        success = group[0]["figure"] == "success"
        target = f"{args.target:.0%} success" if success else f"mean return {args.plain_target:g}"
        fmt = (lambda v: f"{v:.0%}") if success else (lambda v: f"{v:.0f}")
        print(f"\n{env}: {args.steps} env steps, evaluation every {args.eval_every} ({args.eval_episodes} episodes)")
        print(f"| learner | seed | env steps to {target} | evaluations | final ({args.eval_episodes} test episodes) "
              "| wall s | updates/s |")
        print("|---|---|---|---|---|---|---|")
        for r in group:
            reached = r["reached"] if r["reached"] is not None else f"not within {args.steps}"
            curve = "/".join(fmt(v) for _, v in r["evals"])
            print(f"| {r['learner']} | {r['seed']} | {reached} | {curve} | {fmt(r['final'])} | {r['seconds']:.0f} "
                  f"| {r['updates_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=OURS, help="our learner's config")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", nargs="+", type=int, default=[10, 20], help="scripted demos for ours")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--eval-every", type=int, default=2500)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change our config")
    parser.add_argument("--no-sb3", dest="sb3", action="store_false", help="skip the SB3 baseline")
    parser.add_argument("--plain", nargs="?", const="InvertedPendulum-v5", default=None,
                        help="also a plain-Box gymnasium env (default InvertedPendulum-v5)")
    parser.add_argument("--plain-target", type=float, default=950.0, help="mean return that counts as solved")
    parser.add_argument("--only-plain", action="store_true", help="only the plain env (implies --plain)")
    add_grid_options(parser, workers=1)
    parser.add_argument("--rows", type=Path, default=None, help="append each finished run here (JSON lines)")
    parser.add_argument("--out", type=Path, default=Path("runs/external_envs"))
    args = parser.parse_args()
    if args.only_plain and not args.plain:
        args.plain = "InvertedPendulum-v5"

    todo = jobs(args)
    for job in todo:
        job["rows"] = str(args.rows) if args.rows else None
    started = time.perf_counter()
    cells = [GridCell(run_one, (job,), job["out"], job["learner"], job["seed"]) for job in todo]
    records = run_grid(cells, args.backend, args.workers, args.address)
    results = [r for r in records if r["status"] != "failed"]
    table(results, args)
    print(f"\nwall time of the whole benchmark: {time.perf_counter() - started:.0f} s with {args.workers} worker(s)"
          + (" (Ray)" if args.backend == "ray" else ""))
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    import mujoco

    print("machine:", describe_machine(f"mujoco {mujoco.__version__}"))
    end_grid(records)


if __name__ == "__main__":
    main()
