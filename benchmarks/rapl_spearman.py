"""RAPL's Spearman table: how well a learned visual reward ranks held-out rollouts as the true reward does.

As the RAPL paper reports it (Tian et al., "What Matters to You? Towards Visual Representation Alignment for Robot
Learning", ICLR 2024, arXiv:2310.07932; Spearman 0.59/0.61/0.47 against RLHF's 0.38/0.26/0.31): Spearman rank
correlation, over held-out rollouts, of each learned reward's return with the true return. Per task and seed:

- rollouts of the task's scripted expert (``hilrl.feedback.experts``) at noise levels drawn from U(0, 1), filmed by
  the front camera (``--image-size`` px, ``--frames`` frames evenly spaced over ``--horizon`` steps; episodes do not
  end on success, so every video spans the same time); the true return is the sum of the task's dense reward;
- 5 noise-free expert demos (RAPL's reward matches a rollout against the closest of them), a pool of ``--pool``
  rollouts the triplets are drawn from and ``--held`` held-out rollouts (other env seeds) the table is measured on;
- ``--triplets`` triplets of distinct pool rollouts, ranked by their true return (a perfectly rational synthetic
  person: preferred, neutral, negative).

Columns (all on the frozen ImageNet EfficientNet-Lite0 trunk of ``hilrl.policies.pretrained``, cut after stage 4):

- ``frozen``: RAPL's OT reward on the frozen features themselves (flattened maps; no head, no preferences);
- ``untrained``: RAPL's OT reward through the model's head at its initialisation (before any triplet);
- ``rapl``: the same model after :meth:`RaplModel.fit` on the triplets (``--epochs``);
- ``rlhf``: a Bradley-Terry reward model on the same representation (the RAPL head's architecture with a 1-d
  per-frame reward, over the same frozen features; :func:`rlhf_scores`), trained on the same preferences: each
  triplet as its 3 pairs; a rollout's score is the sum of its per-frame rewards.

    python benchmarks/rapl_spearman.py --tasks Reach Push PickCube --seeds 0 --out /tmp/rapl_rows.jsonl

Rows are appended to ``--out`` as each (task, seed) finishes; the table is printed at the end (and rebuilt from
``--out`` with ``--table-only``).

Measured (``--seeds 0``, then ``--seeds 1 2``, defaults otherwise; a 2-core Xeon VM shared with other jobs, torch
2.13 on one thread; about 4-5 min per task and seed). Settings fixed before the tasks ran: RAPL's lr 1e-3, beta
10 and 10 epochs (RaplModel's earlier defaults; looked at on Reach seed 0 only, where lr 1e-2 and beta 100 left
the loss at log 2), RLHF's lr 3e-4 (BPref) and 30 epochs. Mean ± std over seeds 0, 1, 2:

    | task     | frozen      | untrained    | rapl        | rlhf        |
    |----------|-------------|--------------|-------------|-------------|
    | Reach    | 0.18 ± 0.04 | 0.14 ± 0.02  | 0.40 ± 0.06 | 0.33 ± 0.11 |
    | Push     | 0.03 ± 0.09 | -0.00 ± 0.09 | 0.17 ± 0.05 | 0.63 ± 0.16 |
    | PickCube | 0.31 ± 0.09 | 0.28 ± 0.08  | 0.51 ± 0.03 | 0.66 ± 0.11 |

Fitting on the triplets helps RAPL on every task (0.14 -> 0.40, 0.00 -> 0.17, 0.28 -> 0.51), but issue 30's goal
(>= 0.5 on two tasks and above RLHF) is missed: >= 0.5 on PickCube only, above RLHF on Reach only. The fit's loss
falls to 0.13-0.29 while held-out agreement stays low (the head overfits 150 triplets), and a rollout is scored
by its likeness to 5 demos with other goal and cube positions, where the true return depends much on them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe_machine  # noqa: E402

HORIZONS = {"Reach": 30, "Push": 60, "PickCube": 60}  # the noise-free expert succeeds after ~4, 17 and 12 steps
COLUMNS = ("frozen", "untrained", "rapl", "rlhf")


def collect(task: str, seed: int, image_size: int, frames: int, pool: int, held: int, horizon: int | None = None):
    """Expert demos, a pool of rollouts and held-out rollouts: lists of (``(frames, H, W, 3)`` uint8 video, return)."""
    import gymnasium as gym

    import hilrl.envs  # noqa: F401  (registers the tasks)
    from hilrl.feedback.experts import make_expert

    horizon = horizon or HORIZONS[task]
    env = gym.make(f"hilrl/{task}-v0", cameras=("front",), image_size=image_size, max_episode_steps=horizon,
                   terminate_on_success=False)
    keep = set(np.linspace(0, horizon - 1, frames).round().astype(int).tolist())
    rng = np.random.default_rng(seed)

    def rollout(noise: float, episode_seed: int):
        obs, _ = env.reset(seed=episode_seed)
        expert = make_expert(env.unwrapped, noise=noise, seed=episode_seed)
        video, total = [], 0.0
        for t in range(horizon):
            obs, reward, terminated, truncated, _ = env.step(expert(obs))
            total += float(reward)
            if t in keep:
                video.append(obs["front"])
            if terminated or truncated:
                break
        return np.stack(video), total

    base = 100_000 * (seed + 1)  # env seeds: demos, pool and held-out rollouts never share one
    demos = [rollout(0.0, base + i) for i in range(5)]
    pool_rollouts = [rollout(float(rng.uniform(0, 1)), base + 1000 + i) for i in range(pool)]
    held_rollouts = [rollout(float(rng.uniform(0, 1)), base + 5000 + i) for i in range(held)]
    env.close()
    return demos, pool_rollouts, held_rollouts


def make_triplets(pool, count: int, seed: int):
    """``count`` triplets of distinct pool rollouts ranked by true return: (preferred, neutral, negative) indices."""
    rng = np.random.default_rng(seed + 7)
    return [tuple(sorted(rng.choice(len(pool), 3, replace=False), key=lambda k: -pool[k][1])) for _ in range(count)]


def spearman(scores, returns) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(scores, returns).statistic)


def frozen_score(model, video, demos) -> float:
    """RAPL's OT score against the closest demo, on the frozen features flattened per frame (no head)."""
    import torch

    from hilrl.feedback.preferences.rapl import cosine_cost, ot_plan

    x = model.encoder.features(video).flatten(1)
    best = -np.inf
    with torch.no_grad():
        for demo in demos:
            cost = cosine_cost(x, demo)
            best = max(best, float(-(ot_plan(cost, model.reg) * cost).sum()))
    return best


def rlhf_scores(model, pool, triplets, held, seed: int, epochs: int, lr: float = 3e-4) -> tuple[list[float], dict]:
    """RLHF on the same representation: RAPL's head architecture with a 1-d output (a per-frame reward, tanh as
    BPref's members) over the same frozen features, trained with the Bradley-Terry loss
    (:func:`~hilrl.feedback.preferences.models.bradley_terry_loss` on summed per-frame rewards) on the same
    preferences: each triplet as its 3 pairs. Returns the held-out rollouts' summed rewards and the fit's figures."""
    import torch

    from hilrl.feedback.preferences.models import bradley_terry_loss
    from hilrl.feedback.preferences.rapl import FrameEncoder

    torch.manual_seed(seed)
    reward = FrameEncoder(1, seed, model.encoder.kind, model.encoder.channels, model.encoder.grid)
    reward.mean, reward.std = model.encoder.mean, model.encoder.std  # the same standardised features
    optimizer = torch.optim.Adam(reward.head.parameters(), lr=lr)
    index = sorted({i for t in triplets for i in t})
    stacked = torch.stack([model.features(pool[k][0]) for k in index])  # (videos, T, C, h, w)
    where = {k: n for n, k in enumerate(index)}
    pairs = torch.as_tensor([(where[t[a]], where[t[b]]) for t in triplets for a, b in ((0, 1), (0, 2), (1, 2))])

    def returns(videos: torch.Tensor) -> torch.Tensor:  # (n, T, ...) features -> (n,) summed per-frame rewards
        return torch.tanh(reward.embed(videos.flatten(0, 1))).view(len(videos), -1).sum(1)

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(pairs)), max(1, len(pairs) // 32)):
            first, second = pairs[batch, 0], pairs[batch, 1]  # the first is preferred
            loss = bradley_terry_loss(returns(stacked[first]), returns(stacked[second]), torch.ones(len(batch)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        fitted = returns(stacked)
        train = float((fitted[pairs[:, 0]] > fitted[pairs[:, 1]]).float().mean())
        scores = [float(returns(model.encoder.features(v)[None])) for v, _ in held]
    return scores, {"train_accuracy": train}


def run(task: str, seed: int, args) -> dict:
    import torch

    from hilrl.feedback.preferences.rapl import RaplModel

    start = time.time()
    demos, pool, held = collect(task, seed, args.image_size, args.frames, args.pool, args.held)
    collected = time.time() - start
    returns = [r for _, r in held]
    model = RaplModel(seed=seed, lr=args.lr)
    model.set_demos([v for v, _ in demos])
    demo_feats = [model.features(v).flatten(1) for v in model.demo_videos]
    row = {"task": task, "seed": seed, "triplets": args.triplets, "image_size": args.image_size,
           "frames": args.frames, "true_return_range": [min(returns), max(returns)]}
    row["frozen"] = spearman([frozen_score(model, v, demo_feats) for v, _ in held], returns)
    row["untrained"] = spearman([model.video_score(v) for v, _ in held], returns)
    triplets = make_triplets(pool, args.triplets, seed)
    fit_start = time.time()
    row["rapl_loss"] = model.fit([tuple(pool[k][0] for k in t) for t in triplets], epochs=args.epochs)
    model.set_demos(model.demo_videos)
    row["rapl"] = spearman([model.video_score(v) for v, _ in held], returns)
    row["rapl_fit_s"] = round(time.time() - fit_start, 1)
    scores, info = rlhf_scores(model, pool, triplets, held, seed, args.rlhf_epochs)
    row["rlhf"] = spearman(scores, returns)
    row["rlhf_train_accuracy"] = info["train_accuracy"]
    row["collect_s"], row["total_s"] = round(collected, 1), round(time.time() - start, 1)
    del torch
    return row


def table(rows: list[dict]) -> str:
    lines = ["| task | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for task in dict.fromkeys(r["task"] for r in rows):
        group = [r for r in rows if r["task"] == task]
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in group]
            cells.append(f"{np.mean(values):.2f}" + (f" ± {np.std(values):.2f}" if len(values) > 1 else ""))
        lines.append(f"| {task} | {','.join(str(r['seed']) for r in group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["Reach", "Push", "PickCube"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--triplets", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=10, help="RAPL: passes over the triplets")
    parser.add_argument("--lr", type=float, default=1e-3, help="RAPL: the head's Adam learning rate")
    parser.add_argument("--rlhf-epochs", type=int, default=30, help="RLHF: passes over the pairs")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=15, help="frames per video")
    parser.add_argument("--pool", type=int, default=60, help="rollouts the triplets are drawn from")
    parser.add_argument("--held", type=int, default=40, help="held-out rollouts the table is measured on")
    parser.add_argument("--out", type=Path, default=None, help="a JSON-lines file the rows are appended to")
    parser.add_argument("--table-only", action="store_true", help="print the table of the rows in --out")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    if args.table_only:
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    else:
        for seed in args.seeds:  # every task's seed 0 first
            for task in args.tasks:
                row = run(task, seed, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    print("\nSpearman of each reward's return with the true return on held-out rollouts "
          f"({rows[0]['triplets']} triplets, {rows[0]['image_size']} px front camera, {rows[0]['frames']} frames):")
    print(table(rows))
    print(f"\nmachine: {describe_machine(f'torch {torch.__version__}', f'{torch.get_num_threads()} torch thread(s)')}")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
