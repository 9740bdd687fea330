"""Learning from pixels with the true sparse reward against HIL-SERL's learned success classifier as the only reward.

Issue 30's goal: the classifier-reward run reaches >= 0.8 of the true-reward run's test success. Per seed, on
one task config (default ``sim_configs/reach_pixels_classifier.yaml``):

1. labelled frames are recorded once (``hilrl record``'s function, the scripted expert with noise, the env's
   success flag of each frame as its label; seeds 1000 on), and held-out frames the same way (seeds 2000 on,
   noisier: more near misses);
2. ``true``: the config with the env's sparse reward (``reward: env``, the env ending episodes on success);
3. ``classifier``: the config as written, its classifier fitted at the run's start on the labelled frames
   (``RUN/success_classifier.pt``) and its only reward, the env never ending an episode on its own success;
   (``--hold``: in both arms episodes run to the time limit and the demos are whole, the reward paid at every
   step at the goal; ``--policy state``: the policy reads Reach's state, the reward still only the cameras);
4. both final policies are evaluated on the same test episodes (seeds 10000 on) in the same env, one that ends
   an episode on true success (success = the goal reached within the time limit); the classifier's accuracy,
   false-positive and true-positive rates at its threshold are measured on the held-out frames.

Each finished row is appended to ``OUT/rows.jsonl`` as it comes (a long run can be watched and a stopped one
keeps its rows); the table, the ratio and the verdict are printed at the end.

    python benchmarks/pixels_reward.py --seeds 0 --out runs/pixels_reward
    python benchmarks/pixels_reward.py --seeds 0 --hold --out runs/pixels_reward
    python benchmarks/pixels_reward.py --seeds 0 --policy state --steps 2000 --out runs/pixels_reward
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def record_labels(config, out: Path, episodes: int, noise: float, seed: int) -> Path:
    from hilrl.runtime.record import record_demos

    if not out.is_file():
        record_demos(config.env, out, episodes, noise=noise, seed=seed, show_progress=False)
    return out


def run_row(args: argparse.Namespace, arm: str, seed: int, labels: Path, heldout: Path) -> dict:
    from hilrl.config import load_config
    from hilrl.feedback.preferences.classifier import SuccessClassifier, recorded_labels
    from hilrl.runtime.evaluate import evaluate_policy
    from hilrl.runtime.run import load_policy
    from hilrl.runtime.train import train

    overrides = {"train.seed": seed, "train.steps": args.steps, "train.video": False, "train.eval_every": 0}
    if arm == "true":
        overrides.update({"reward.source": "env", "reward.kwargs": {}, "env.terminate_on_success": not args.hold})
    else:
        overrides["reward.kwargs.recording"] = str(labels)
        overrides["reward.kwargs.end_episodes"] = not args.hold
    if args.hold:
        overrides["demos.keep_after_success"] = None
    if args.policy == "state":  # the policy reads the goal's coordinates; only the reward comes from the cameras
        overrides.update({"algo.obs_keys": ["ee_pos", "object"], "algo.utd": 4})
    config = load_config(args.config, overrides)
    name = f"{arm}{'_hold' if args.hold else ''}{'_state' if args.policy == 'state' else ''}_seed{seed}"
    out = Path(args.out) / name
    started = time.perf_counter()
    final = train(config, out, show_progress=False)
    minutes = (time.perf_counter() - started) / 60
    _, algo, _ = load_policy(out)
    test_env = config.env.model_copy(update={"terminate_on_success": True})
    result = evaluate_policy(test_env, lambda obs: algo.act(obs, deterministic=True), args.eval_episodes,
                             show_progress=False)
    row = {"arm": arm, "seed": seed, "steps": args.steps, "hold": args.hold, "policy": args.policy,
           "test_success": result.success_rate, "final_eval_as_configured": final.success_rate,
           "minutes": round(minutes, 1)}
    if arm == "classifier":
        classifier = SuccessClassifier.load(out / "success_classifier.pt")
        threshold = float(config.reward_config.kwargs.get("threshold", 0.5))
        frames, truth = recorded_labels(heldout, classifier.cameras)
        said = classifier.probability(frames) > threshold
        row.update(heldout_frames=int(len(truth)), heldout_successes=int(truth.sum()),
                   accuracy=float((said == truth).mean()), false_positive_rate=float(said[~truth].mean()),
                   true_positive_rate=float(said[truth].mean()) if truth.any() else float("nan"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "sim_configs/reach_pixels_classifier.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=3000, help="env steps per run")
    parser.add_argument("--label-episodes", type=int, default=20, help="recorded episodes the classifier learns from")
    parser.add_argument("--heldout-episodes", type=int, default=10)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--arms", nargs="+", default=["true", "classifier"], choices=["true", "classifier"])
    parser.add_argument("--hold", action="store_true", help="episodes run to the time limit in both arms (no end "
                        "on success, the demos whole): the reward is paid at every step at the goal, env's or "
                        "classifier's")
    parser.add_argument("--policy", choices=["pixels", "state"], default="pixels",
                        help="what the policy reads: the config's (cameras, no goal coordinates), or Reach's state "
                        "(ee_pos, object: reach_sac.yaml's) while the reward still comes from the cameras")
    parser.add_argument("--out", default="runs/pixels_reward")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from hilrl.config import load_config

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/pixels_reward.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = describe_machine(f"torch {torch.__version__}", "1 torch thread")
    print(f"machine: {machine}\ncommand: {command}", flush=True)
    base = load_config(args.config)
    labels = record_labels(base, out / "labels.hdf5", args.label_episodes, noise=0.3, seed=1000)
    heldout = record_labels(base, out / "heldout.hdf5", args.heldout_episodes, noise=0.6, seed=2000)
    rows_file = out / "rows.jsonl"
    done = {(r["arm"], r["seed"], r.get("hold", False), r.get("policy", "pixels"))
            for r in map(json.loads, rows_file.read_text().splitlines())} if rows_file.is_file() else set()
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed, args.hold, args.policy) in done:
                continue
            row = run_row(args, arm, seed, labels, heldout)
            with rows_file.open("a") as f:
                f.write(json.dumps({**row, "machine": machine, "command": command}) + "\n")
            print(json.dumps(row), flush=True)
    report(rows_file, args.config)


def report(rows_file: Path, config: str) -> None:
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    print(f"\n{Path(config).name}: test success (same env and 50-episode test seeds, episodes end on true success)")
    print("| arm | policy reads | training episodes | seed | env steps | test success | final eval as configured | "
          "classifier acc / FPR / TPR (held-out) | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        quality = (f"{r['accuracy']:.3f} / {r['false_positive_rate']:.3f} / {r['true_positive_rate']:.3f} "
                   f"({r['heldout_frames']} frames)" if "accuracy" in r else "-")
        episodes = "to the time limit" if r.get("hold") else "end on success"
        print(f"| {r['arm']} | {r.get('policy', 'pixels')} | {episodes} | {r['seed']} | {r['steps']} | "
              f"{r['test_success']:.0%} | {r['final_eval_as_configured']:.0%} | {quality} | {r['minutes']} |")
    settings = sorted({(r.get("hold", False), r.get("policy", "pixels"), r["steps"]) for r in rows})
    for hold, policy, steps in settings:
        def success(arm: str) -> list[float]:
            return [r["test_success"] for r in rows if r["arm"] == arm and r.get("hold", False) == hold
                    and r.get("policy", "pixels") == policy and r["steps"] == steps]
        true, learned = success("true"), success("classifier")
        if true and learned:
            ratio = np.mean(learned) / max(np.mean(true), 1e-9)
            verdict = "met" if ratio >= 0.8 else "missed"
            print(f"policy on {policy}, episodes {'to the time limit' if hold else 'end on success'}, {steps} steps: "
                  f"classifier / true reward test success {np.mean(learned):.2f} / {np.mean(true):.2f} = "
                  f"{ratio:.2f} (goal >= 0.8: {verdict}; {len(learned)} and {len(true)} seeds)")


if __name__ == "__main__":
    main()
