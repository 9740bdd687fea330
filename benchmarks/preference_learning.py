"""Preference learning on hilrl tasks: success of SAC trained on learned rewards vs the true reward.

Variants (synthetic teachers, state observations, same SAC settings as ``sim_configs/push_prefs.yaml``):
``true`` (SAC on the task's dense reward), ``bt`` (Bradley-Terry + PEBBLE's relabelling with N queries, uniform
or disagreement selection; PEBBLE, Lee et al. 2021, rll-research/BPref), ``unsup`` (``bt`` after PEBBLE's
state-entropy pre-training for ``--unsup-steps`` env steps), ``heron`` (the factor ranking alone;
HERON, abukharin3/HERON), ``rapl`` (``benchmarks/rapl_spearman.py``'s Reach row: RAPL's OT reward on the
pretrained backbone from <= 150 triplets, Spearman with the true return), ``regret`` and ``regret_pr`` (the
regret teacher of Knox et al., arXiv:2206.02231, with the regret loss or the partial-return Bradley-Terry loss;
V*(s) = Q(s, π(s)) of the same seed's ``true`` run, which must come first in ``--variants``) and ``page`` (the
labelling page in headless Chromium: keypress to the next query's videos playing).
Agreement = accuracy of the reward model on held-out segment pairs and Spearman of segment returns,
against the true reward (the source's last ``reward/agreement`` and ``reward/spearman``).

    python benchmarks/preference_learning.py --tasks Push --seeds 0 --steps 6000 --queries 300 \
        --selections disagreement --variants true bt heron
    python benchmarks/preference_learning.py --tasks Push --seeds 0 --steps 6000 --queries 500 \
        --selections disagreement --variants true regret regret_pr
    python benchmarks/preference_learning.py --variants rapl page
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
RL_VARIANTS = ("true", "bt", "unsup", "regret", "regret_pr", "heron")
QUERY_VARIANTS = ("bt", "unsup", "regret", "regret_pr")  # rows for each --queries and --selections
HERON_FACTORS = {"Reach": [{"term": "distance", "better": "lower"}],
                 "Push": [{"term": "goal_distance", "better": "lower"}, {"term": "reach_distance", "better": "lower"}]}


def base_config(task: str, steps: int, seed: int) -> dict:
    raw = yaml.safe_load((ROOT / "sim_configs" / "push_prefs.yaml").read_text())
    raw["env"]["id"] = f"hilrl/{task}-v0"
    raw["train"].update(steps=steps, seed=seed, checkpoint_every=steps)
    if task == "Reach":  # no cube: no relative positions
        raw["env"].pop("relative_positions", None)
        raw["algo"]["obs_keys"] = raw["reward"]["kwargs"]["obs_keys"] = ["ee_pos", "object"]
    return raw


def last_scalars(run: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("reward/")}


def reference_value(run: Path, keys: list[str]):
    """V*(obs_rows) = mean Q(s, π(s)) of a finished run's critic and deterministic policy; rows are the reward
    model's observation keys concatenated (a segment's ``start_obs``/``end_obs``)."""
    from hilrl.errors import HilrlError
    from hilrl.runtime.run import load_policy

    if not (run / "metrics.json").is_file():
        raise HilrlError(f"the regret variants read V* from the true-reward run {run}, which is not there; put "
                         "'true' before them in --variants (same --out)")
    _, sac, _ = load_policy(run)
    shapes = [tuple(sac.observation_space[k].shape) for k in keys]
    cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]

    def value(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.float32)
        obs = {k: part.reshape(len(rows), *shape) for k, part, shape in zip(keys, np.split(rows, cuts, axis=1), shapes)}
        return sac.q_value(obs, sac.act(obs, deterministic=True))

    return value


def run_rl(task: str, variant: str, queries: int, selection: str, steps: int, seed: int, out: Path,
           unsup_steps: int = 1000, test_episodes: int = 100) -> dict:
    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    raw = base_config(task, steps, seed)
    if variant == "true":
        raw["reward"] = "env"
    elif variant == "heron":
        raw["reward"] = {"source": "heron", "kwargs": {"factors": HERON_FACTORS[task], "start_after": 1000,
                                                       "update_every": 1000}}
    else:
        kwargs = raw["reward"]["kwargs"]
        sessions = max(1, (steps - kwargs["first_query_at"]) // kwargs["query_every"])
        kwargs.update(max_queries=queries, selection=selection, queries_per_session=max(1, -(-queries // sessions)))
        if variant == "unsup":
            kwargs.update(unsupervised_steps=unsup_steps)
        if variant in ("regret", "regret_pr"):
            kwargs.update(teacher={"kind": "regret", "discount": raw["algo"].get("gamma", 0.99)},
                          loss="regret" if variant == "regret" else "bradley_terry")
    run = out / f"{task}_{variant}_{queries}_{selection}_s{seed}"
    config = validate_config(raw, source=f"benchmark {task} {variant}")
    source = None
    if variant in ("regret", "regret_pr"):
        from hilrl.feedback.preferences.source import PreferenceSettings, PreferenceSource
        from hilrl.feedback.preferences.store import PreferenceStore

        settings = PreferenceSettings.model_validate(raw["reward"]["kwargs"])
        value = reference_value(out / f"{task}_true_0_-_s{seed}", raw["algo"]["obs_keys"])
        source = PreferenceSource(settings, PreferenceStore.for_run(run), seed=seed, value=value)
    result = train(config, run, show_progress=False, reward_source=source)
    scalars = last_scalars(run) if variant != "true" else {}
    test = float("nan")
    if test_episodes:  # the run's policy again on more unseen episodes: 20 leave a standard error near 0.11
        from hilrl.runtime.run import evaluate_run

        test = evaluate_run(run, episodes=test_episodes, show_progress=False).success_rate
    return {"success": result.success_rate, "test_success": test, "agreement": scalars.get("reward/agreement", float("nan")),
            "spearman": scalars.get("reward/spearman", float("nan")), "labels": scalars.get("reward/labels", 0)}


def rapl_benchmark(triplets: int, seed: int) -> dict:
    """RAPL's Spearman row on Reach (``benchmarks/rapl_spearman.py``, its default settings): the OT reward on the
    pretrained backbone, untrained and fitted on ``triplets`` ranked triplets, and RLHF on the same preferences."""
    import rapl_spearman  # benchmarks/, on sys.path when this script runs

    args = rapl_spearman.parse_args(["--triplets", str(triplets)])
    row = rapl_spearman.run("Reach", seed, args)
    return {key: row[key] for key in ("triplets", *rapl_spearman.COLUMNS)}


def page_benchmark(labels: int, seed: int) -> dict:
    """Median and p95 ms from a keypress to the next query's videos playing, in headless Chromium."""
    import socket
    import subprocess
    import time

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from preference_helpers import pending_run  # the tests' helper: a run folder with pending queries

    with tempfile.TemporaryDirectory() as tmp:
        run = pending_run(Path(tmp) / "run", queries=labels + 2, seed=seed)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "hilrl.cli", "label", str(run), "--port", str(port)],
                                  env={**os.environ, "MUJOCO_GL": "egl"})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--autoplay-policy=no-user-gesture-required"])
                page = browser.new_page()
                for _ in range(100):
                    try:
                        page.goto(f"http://127.0.0.1:{port}/")
                        break
                    except Exception:  # noqa: BLE001 - the server is still starting
                        time.sleep(0.2)
                page.wait_for_selector("body[data-ready='1']", timeout=60000)
                for i in range(labels):
                    page.wait_for_function("document.querySelectorAll('#next video').length > 0 && "
                                           "Array.from(document.querySelectorAll('#next video')).every(v => v.readyState >= 3)",
                                           timeout=60000)
                    page.keyboard.press("ArrowLeft")
                    page.wait_for_function(f"window.hilrlTimings.length >= {i + 1}", timeout=60000)
                timings = np.array(page.evaluate("window.hilrlTimings"))
                browser.close()
        finally:
            server.terminate()
            server.wait(10)
    return {"median_ms": float(np.median(timings)), "p95_ms": float(np.percentile(timings, 95)), "n": len(timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["Reach", "Push"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--queries", nargs="+", type=int, default=[100, 300, 1000])
    parser.add_argument("--selections", nargs="+", default=["uniform", "disagreement"])
    parser.add_argument("--variants", nargs="+", default=["true", "bt", "heron", "rapl", "page"])
    parser.add_argument("--unsup-steps", type=int, default=1000, help="variant unsup: pre-training env steps")
    parser.add_argument("--test-episodes", type=int, default=100, help="the run's policy re-evaluated on this many "
                        "test episodes (column 'test'; 0 = skip)")
    parser.add_argument("--rapl-triplets", type=int, default=150)
    parser.add_argument("--page-labels", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = args.out or Path(tempfile.mkdtemp(prefix="pref_bench_"))
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for variant in [v for v in args.variants if v in RL_VARIANTS]:
                settings = ([(q, s) for q in args.queries for s in args.selections] if variant in QUERY_VARIANTS
                            else [(0, "-")])
                for queries, selection in settings:
                    result = run_rl(task, variant, queries, selection, args.steps, seed, out, args.unsup_steps,
                                    args.test_episodes)
                    rows.append((task, seed, variant, queries, selection, result))
                    print(f"{task} seed {seed} {variant} q={queries} {selection}: {result}", flush=True)
    print(f"\n| task | variant | queries | selection | seeds | success | / true | test {args.test_episodes} | / true "
          f"| agreement | spearman |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for task in args.tasks:
        true = [r for t, _, v, _, _, r in rows if t == task and v == "true"]
        base = float(np.mean([r["success"] for r in true])) if true else float("nan")
        base_test = float(np.mean([r["test_success"] for r in true])) if true else float("nan")
        keys = sorted({(v, q, s) for t, _, v, q, s, _ in rows if t == task})
        for variant, queries, selection in keys:
            group = [r for t, _, v, q, s, r in rows if t == task and (v, q, s) == (variant, queries, selection)]
            success = float(np.mean([g["success"] for g in group]))
            test = float(np.mean([g["test_success"] for g in group]))
            agree = float(np.mean([g["agreement"] for g in group]))
            rho = float(np.mean([g["spearman"] for g in group]))
            ratio = success / base if base and base == base else float("nan")
            test_ratio = test / base_test if base_test and base_test == base_test else float("nan")
            print(f"| {task} | {variant} | {queries or '-'} | {selection} | {len(group)} | {success:.2f} | {ratio:.2f} "
                  f"| {test:.2f} | {test_ratio:.2f} | {agree:.2f} | {rho:.2f} |")
    if "rapl" in args.variants:
        print("\nRAPL on Reach (128 px front camera, Spearman with the true return; benchmarks/rapl_spearman.py):",
              rapl_benchmark(args.rapl_triplets, args.seeds[0]))
    if "page" in args.variants:
        print("\nlabelling page, keypress -> next query's videos playing (Chromium):",
              page_benchmark(args.page_labels, args.seeds[0]))
    print(f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"runs in {out}")
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))


if __name__ == "__main__":
    main()
