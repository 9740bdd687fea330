"""HIL-SERL in simulation: does the person's share fall while success rises? Reach and PickCube.

HIL-SERL (Luo et al. 2024, arXiv:2410.21845, rail-berkeley/hil-serl) learns from ~20 demos and a person's
corrections, the person stepping in less and less. Here, per task x demos x seed, through ``hilrl train``'s
library entry (the shipped configs ``sim_configs/reach_hil.yaml`` and ``sim_configs/pick_cube_hil.yaml`` with
one section changed per method):

* ``person``: as shipped: the simulated person who watches the task (``intervention.source: person``);
* ``distance``: the same learner with HG-DAgger's action-distance gate as the person (the configs' former one);
* ``none``: the same learner with nobody to step in;
* ``hg_dagger``: HG-DAgger (Kelly et al. 2019: BC aggregated on the interventions of a person who gates), the
  person being the same simulated person as ``person``'s; ``hg_dagger_distance``: the same with the action-distance
  gate (‖a_expert − a_π‖₁ ≥ 1, RLIF's simulated HG-DAgger). On PickCube that gate stopped firing while the policy
  still failed 60% of its episodes: its actions stayed within the threshold of the expert's yet missed the grasp,
  so its failures were never labelled (seed 0, 20 demos: 25% on unseen seeds against BC's 50% on the demos alone);
* ``bc``: BC on the demos alone, and ``bc_matched``: BC on as many demo steps as HG-DAgger's expert labels
  (demos plus interventions) of the same seed, so HG-DAgger is judged against BC on the same expert steps;
* ``rlif``: the shipped learner with RLIF's reward (Luo et al. 2023, pd-perry/RLIF: the env reward discarded, -1
  on the agent's step before each takeover) from the same person, whose steps are not copied to the demos.

``--expert-offset`` makes the person (and the demos' recorder) a weak expert whose error is systematic: the
task's expert aiming that many metres above its target (a depth misjudged through a camera). RLIF's weak experts
are BC policies, whose errors are functions of the state; the noise knob of ``hilrl.feedback.experts`` is
zero-mean, so imitation averages it out (Reach's expert succeeds in 100% of episodes even at noise 0.5).
Reach's expert alone, 50 seeded episodes: 2.0 cm above, 52%; 2.5 cm, 0%.

Printed: eval success (validation seeds) and the person's share of steps every ``--every`` env steps, the first
step at 90% success, the person's total steps, final success on unseen seeds and wall time; a png of both
curves per task is written next to the runs (``--out``). Rows are appended to ``rows.jsonl`` as runs finish,
and a run already in ``rows.jsonl`` is not run again (so a cut benchmark can be resumed).

    python benchmarks/hil_serl_sim.py --tasks Reach --seeds 0 1 2 --demos 10 20
    python benchmarks/hil_serl_sim.py --tasks PickCube --seeds 0 --demos 20 --methods person
    python benchmarks/hil_serl_sim.py --tasks Reach --demos 10 --methods rlif hg_dagger --expert-offset 0.025
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"Reach": "sim_configs/reach_hil.yaml", "PickCube": "sim_configs/pick_cube_hil.yaml"}
STEPS = {"Reach": 3000, "PickCube": 15000}  # PickCube: the goal, >= 90% within 15k env steps
# the distance gates the configs shipped before the person (reach_hil: threshold 1.5; pick_cube_hil: 2.0, 4 steps)
DISTANCE = {"Reach": {"threshold": 1.5}, "PickCube": {"threshold": 2.0, "duration": 4}}
METHODS = ("person", "distance", "none", "hg_dagger", "hg_dagger_distance", "bc", "bc_matched", "rlif")


class AimsAbove:
    """The task's own expert aiming ``offset`` metres above its target: a miscalibrated person (``env.expert``)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def __call__(self, env, noise: float = 0.0, seed: int | None = None):
        from hilrl.feedback.experts import task_expert

        expert = task_expert(env, noise, seed)
        aim, lift = expert.waypoint, np.array([0.0, 0.0, self.offset])

        def waypoint(obs):
            target, gripper = aim(obs)
            return target + lift, gripper

        expert.waypoint = waypoint
        return expert


AIMS_2_0_CM, AIMS_2_5_CM = AimsAbove(0.02), AimsAbove(0.025)
# --expert-offset -> env.expert (this module is on sys.path: the script's folder, in the forked workers too)
EXPERT_OFFSETS = {0.02: "hil_serl_sim:AIMS_2_0_CM", 0.025: "hil_serl_sim:AIMS_2_5_CM"}


def run_suffix(expert_offset: float) -> str:
    """What a run folder's and a plot's name gain with ``--expert-offset``."""
    return f"_above{expert_offset * 1000:g}mm" if expert_offset else ""


def method_config(method: str, task: str, demos: int, seed: int, steps: int, every: int,
                  bc_episodes: int | None = None, expert_offset: float = 0.0) -> dict:
    config = yaml.safe_load((ROOT / SHIPPED[task]).read_text())
    if expert_offset:
        config["env"]["expert"] = EXPERT_OFFSETS[expert_offset]
    config["demos"] = {**config.get("demos", {}), "episodes": demos}
    config["train"] = {**config["train"], "steps": steps, "seed": seed, "eval_every": every, "eval_episodes": 20,
                       "checkpoint_every": steps, "video": False, "keep_best": False}
    obs_keys = config["algo"].get("obs_keys")
    if method == "person":
        return config
    if method == "distance":
        config["intervention"] = {"source": "distance", **DISTANCE[task], "learn_from": "hil_serl"}
        return config
    if method == "none":
        config.pop("intervention", None)
        return config
    if method == "rlif":
        config["intervention"] = {**config["intervention"], "learn_from": "rlif"}
        return config
    if method in ("hg_dagger", "hg_dagger_distance"):
        gate = ({"source": "distance", "threshold": 1.0} if method == "hg_dagger_distance" else
                {k: v for k, v in config["intervention"].items() if k != "learn_from"})  # the shipped person
        return {"env": config["env"], "demos": config["demos"], "train": config["train"],
                "algo": {"name": "hg_dagger", "obs_keys": obs_keys, "round_steps": every, "updates_per_round": 500},
                "intervention": gate}
    if method in ("bc", "bc_matched"):
        episodes = demos if method == "bc" else bc_episodes
        return {"env": config["env"], "demos": {**config["demos"], "episodes": episodes},
                "algo": {"name": "bc", "obs_keys": obs_keys},
                "train": {**config["train"], "steps": 3000, "eval_every": 0}}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def curves(run: Path) -> dict[str, dict[int, float]]:
    """``eval/success_rate`` and ``rollout/intervention_rate`` of a run folder's TensorBoard, by env step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags().get("scalars", []))
    return {name: {e.step: float(e.value) for e in events.Scalars(tag)} if tag in tags else {}
            for name, tag in (("success", "eval/success_rate"), ("intervention", "rollout/intervention_rate"))}


def run_one(method: str, task: str, demos: int, seed: int, steps: int, every: int, out: Path,
            bc_episodes: int | None = None, expert_offset: float = 0.0) -> dict:
    import torch

    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    started = time.perf_counter()
    config = method_config(method, task, demos, seed, steps, every, bc_episodes, expert_offset)
    train(validate_config(config, SHIPPED[task]), out, show_progress=False)
    seconds = time.perf_counter() - started
    metrics = json.loads((out / "metrics.json").read_text())
    curve = curves(out)
    success = dict(curve["success"])
    # the final evaluation (unseen seeds); BC's run is gradient steps, shown at the budget's end
    success[steps if method.startswith("bc") else metrics.get("env_steps", steps)] = metrics["success_rate"]
    # the person's share of the steps in each window of `every` steps (the loop logs a 500-step average)
    rate = {s: v for s, v in curve["intervention"].items() if s % every == 0}
    to_90 = next((s for s in sorted(success) if success[s] >= 0.9 - 1e-6), None)  # (TensorBoard keeps float32)
    return {"method": method, "task": task, "demos": demos, "seed": seed, "final_success": metrics["success_rate"],
            "success": success, "intervention_rate": rate, "steps_to_90": to_90,
            "person_steps": metrics.get("intervened_steps", 0), "labels": metrics.get("labels"),
            "env_steps": metrics.get("env_steps", 0), "seconds": round(seconds, 1),
            "bc_episodes": bc_episodes, "expert_offset": expert_offset}


def plot(rows: list[dict], task: str, path: Path) -> None:
    """Success (solid) and the person's share (dotted) against env steps, one colour per method (Pillow)."""
    from PIL import Image, ImageDraw

    colours = {"person": (200, 30, 30), "distance": (30, 90, 200), "none": (90, 90, 90), "hg_dagger": (30, 150, 60),
               "hg_dagger_distance": (120, 200, 120),
               "bc": (160, 100, 0), "bc_matched": (140, 0, 160)}
    width, height, pad = 900, 520, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    steps = max([max([*r["success"], *r["intervention_rate"], 1]) for r in rows if r["task"] == task] or [1])

    def xy(step: float, value: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * step / steps, height - pad - (height - 2 * pad) * value

    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for v in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        draw.line([xy(0, v), xy(steps, v)], fill=(225, 225, 225))
        draw.text((8, xy(0, v)[1] - 6), f"{v:.2f}", fill="black")
    for k in range(0, 6):
        s = steps * k / 5
        draw.text((xy(s, 0)[0] - 15, height - pad + 8), f"{int(s)}", fill="black")
    draw.text((pad, 20), f"{task}: eval success (solid), person's share of steps (dotted) vs env steps",
              fill="black")
    legend_y = pad + 8
    for method in METHODS:
        group = [r for r in rows if r["task"] == task and r["method"] == method]
        if not group:
            continue
        colour = colours[method]
        for r in group:
            for series, dotted in (("success", False), ("intervention_rate", True)):
                points = sorted((int(s), v) for s, v in r[series].items())
                if len(points) == 1:  # BC: one final figure, drawn across
                    points = [(0, points[0][1]), (steps, points[0][1])]
                for (s0, v0), (s1, v1) in zip(points, points[1:]):
                    if dotted:
                        for t in np.linspace(0, 1, 12)[::2]:
                            a = xy(s0 + (s1 - s0) * t, v0 + (v1 - v0) * t)
                            b = xy(s0 + (s1 - s0) * (t + 1 / 11), v0 + (v1 - v0) * (t + 1 / 11))
                            draw.line([a, b], fill=colour, width=2)
                    else:
                        draw.line([xy(s0, v0), xy(s1, v1)], fill=colour, width=2)
        draw.text((width - pad - 110, legend_y), method, fill=colour)
        legend_y += 14
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["Reach", "PickCube"], choices=sorted(SHIPPED))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--demos", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per run (default Reach 3000, PickCube 15000)")
    parser.add_argument("--every", type=int, default=1000, help="env steps between evaluations")
    parser.add_argument("--out", type=Path, default=Path("runs/hil_serl_sim"))
    parser.add_argument("--expert-offset", type=float, default=0.0, choices=[0.0, *EXPERT_OFFSETS],
                        help="metres the person's expert (and the demos') aims above its target: a weak expert")
    args = parser.parse_args()

    log = args.out / "rows.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    for row in done:  # JSON keeps the env steps of the curves as strings
        for series in ("success", "intervention_rate"):
            row[series] = {int(step): value for step, value in row[series].items()}
    rows = []
    suffix = run_suffix(args.expert_offset)
    # hg_dagger before bc_matched, whose demo count is HG-DAgger's expert steps
    order = sorted(args.methods, key=lambda m: (m == "bc_matched", METHODS.index(m)))
    for task in args.tasks:
        steps = args.steps or STEPS[task]
        for demos in args.demos:
            for seed in args.seeds:
                for method in order:
                    key = (method, task, demos, seed, args.expert_offset)
                    old = [r for r in done if (r["method"], r["task"], r["demos"], r["seed"],
                                               r.get("expert_offset", 0.0)) == key
                           and (r["env_steps"] == steps or method.startswith("bc"))]
                    if old:
                        rows.append(old[-1])
                        continue
                    bc_episodes = None
                    if method == "bc_matched":
                        dagger = [r for r in rows if (r["method"], r["task"], r["demos"], r["seed"])
                                  == ("hg_dagger", task, demos, seed)]
                        if not dagger:
                            print(f"bc_matched {task} demos {demos} seed {seed}: needs hg_dagger in --methods")
                            continue
                        demo_len = demo_length(args.out / f"{task}_d{demos}_hg_dagger_s{seed}{suffix}")
                        # HG-DAgger's expert steps: its demos and its intervention labels
                        bc_episodes = demos + math.ceil(dagger[0]["labels"] / demo_len)
                    out = args.out / f"{task}_d{demos}_{method}_s{seed}{suffix}"
                    row = run_one(method, task, demos, seed, steps, args.every, out, bc_episodes, args.expert_offset)
                    rows.append(row)
                    with log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{task} demos {demos} seed {seed} {method}: final {row['final_success']:.2f}, "
                          f"person steps {row['person_steps']}, {row['seconds']:.0f} s", flush=True)
    report(rows, args)


def demo_length(run: Path) -> float:
    """Mean steps of the demos a run folder recorded (``demos.hdf5``, robomimic layout)."""
    import h5py

    with h5py.File(run / "demos.hdf5", "r") as f:
        lengths = [len(f["data"][name]["actions"]) for name in f["data"]]
    return float(np.mean(lengths))


def report(rows: list[dict], args: argparse.Namespace) -> None:
    suffix = run_suffix(args.expert_offset)
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for task in args.tasks:
        steps = sorted({int(s) for r in rows if r["task"] == task for s in r["success"]})
        weak = (f"; the person's expert aims {args.expert_offset * 100:g} cm above its target"
                if args.expert_offset else "")
        print(f"\n### {task}: eval success / person's share of steps, every {args.every} env steps (all seeds){weak}")
        print("| demos | method | seed | " + " | ".join(str(s) for s in steps) + " | steps to 90% | person steps "
              "| final (unseen seeds) | wall s |")
        print("|---|---|---|" + "---|" * len(steps) + "---|---|---|---|")
        for r in rows:
            if r["task"] != task:
                continue
            cells = []
            for s in steps:
                success, share = r["success"].get(s), r["intervention_rate"].get(s)
                cells.append("" if success is None else fmt(success) + ("" if share is None else f" / {share:.2f}"))
            name = r["method"] + (f" ({r['bc_episodes']} demos)" if r.get("bc_episodes") else "")
            to_90 = next((s for s in sorted(r["success"]) if r["success"][s] >= 0.9 - 1e-6), None)
            print(f"| {r['demos']} | {name} | {r['seed']} | " + " | ".join(cells) +
                  f" | {to_90 or '-'} | {r['person_steps']} | {fmt(r['final_success'])} | "
                  f"{r['seconds']:.0f} |")
        png = args.out / f"{task.lower()}_curves{suffix}.png"
        plot([r for r in rows if r["task"] == task], task, png)
        print(f"plot: {png}")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", describe_machine("shared with other jobs: wall times are contended"))


if __name__ == "__main__":
    main()
