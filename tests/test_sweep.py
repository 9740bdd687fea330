"""`hilrl sweep` as a user runs it: a tiny grid of seeds × settings on the local pool, its summary table, and the
same command continuing and then skipping the runs it holds; and :func:`run_grid`, the same runner, as the
benchmark scripts drive it (their own cells, on the local pool and on Ray)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hilrl.errors import HilrlError
from hilrl.runtime.sweep import GridCell, grid_report, parse_grid, plan, run_grid, summarise

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "sim_configs" / "reach_sac.yaml"
# a few hundred steps of a small SAC: what a grid needs to show its plumbing, not to learn
SMALL = ["--set", "train.learning_starts=50", "--set", "demos.episodes=2", "--set", "train.eval_episodes=2",
         "--set", "train.eval_every=0", "--set", "train.video=false", "--set", "train.checkpoint_every=100",
         "--set", "algo.hidden=[32,32]", "--set", "algo.batch_size=32"]


def hilrl_sweep(out: Path, steps: int, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hilrl.cli", "sweep", str(CONFIG), "--seeds", "0", "1", "--set", "algo.utd=1,2",
               "--set", f"train.steps={steps}", *SMALL, "--out", str(out), "--workers", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_a_sweep_trains_the_grid_writes_its_summary_and_continues_where_it_stopped(tmp_path):
    out = tmp_path / "sweep"
    first = hilrl_sweep(out, 150)
    assert first.returncode == 0, first.stdout + first.stderr
    runs = [out / f"algo.utd={utd}" / f"seed_{seed}" for utd in (1, 2) for seed in (0, 1)]
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["env_steps"] == 150
    summary = json.loads((out / "summary.json").read_text())
    assert [row["setting"] for row in summary["rows"]] == ["algo.utd=1", "algo.utd=2"]
    for row in summary["rows"]:  # the table's figures are the runs' own, mean and sample std over the 2 seeds
        returns = [json.loads((out / row["setting"] / f"seed_{s}" / "metrics.json").read_text())["mean_return"]
                   for s in (0, 1)]
        assert row["seeds"] == 2 and row["mean_return"] == pytest.approx(sum(returns) / 2)
        assert row["mean_return_std"] == pytest.approx(abs(returns[0] - returns[1]) / 2 ** 0.5)
        assert f"| {row['setting']} | 2 | " in (out / "summary.md").read_text()
    assert "algo.utd=1" in first.stdout and "± " in first.stdout  # the printed table

    # a longer total: every run continues from its checkpoint at 150 (the runs' own resume), none starts over
    longer = hilrl_sweep(out, 250)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["env_steps"] == 250
        assert (run / "checkpoints" / "step_250.pt").is_file()
    assert (longer.stdout + longer.stderr).count("resuming") == 4, longer.stderr  # each run said where it continued
    assert {r["status"] for r in json.loads((out / "summary.json").read_text())["runs"]} == {"trained"}

    # again: nothing left to train, every run is skipped and the table is the same
    again = hilrl_sweep(out, 250)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r["status"] for r in json.loads((out / "summary.json").read_text())["runs"]} == {"skipped"}


def test_grid_values_are_read_as_yaml_and_a_bad_one_is_named_before_anything_trains(tmp_path):
    assert parse_grid(["algo.hidden=[32,32],[64,64]", "algo.utd=1,4"]) == [
        ("algo.hidden", [[32, 32], [64, 64]]), ("algo.utd", [1, 4])]
    runs = plan(CONFIG, [0, 1, 2], ["algo.utd=1,4", "train.steps=300"], tmp_path)
    assert len(runs) == 6 and runs[0].out == tmp_path / "algo.utd=1" / "seed_0"
    with pytest.raises(HilrlError, match="algo.utd"):
        plan(CONFIG, [0], ["algo.utd=1,-3"], tmp_path)
    assert not list(tmp_path.iterdir())


def test_summary_counts_failed_runs_apart():
    records = [{"setting": "a", "seed": 0, "status": "trained", "success_rate": 1.0, "mean_return": 2.0},
               {"setting": "a", "seed": 1, "status": "failed", "error": "boom"}]
    (row,) = summarise(records)
    assert row["seeds"] == 1 and row["failed"] == 1 and row["success_rate"] == 1.0 and row["success_rate_std"] == 0.0


def train_cell(raw: dict, seed: int, out: str) -> dict:
    """A benchmark script's cell: one config trained with `hilrl train`'s function, its table row."""
    from hilrl.config import validate_config
    from hilrl.runtime.train import train

    result = train(validate_config({**raw, "train": {**raw["train"], "seed": seed}}), out, show_progress=False)
    return {"learner": raw["algo"]["name"], "success": result.success_rate, "pid": os.getpid(),
            "env_steps": json.loads((Path(out) / "metrics.json").read_text())["env_steps"]}


def tiny_reach(**algo) -> dict:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["algo"].update({"hidden": [32, 32], "batch_size": 32, **algo})
    raw["demos"]["episodes"] = 2
    raw["train"].update({"steps": 100, "learning_starts": 50, "eval_episodes": 2, "eval_every": 0, "video": False,
                         "checkpoint_every": 100})
    return raw


# ray (35 s) is slow-marked; a sweep on Ray stays in CI through tests/test_ray.py (the cluster sweep test)
@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_benchmark_grid_runs_its_cells_names_a_failed_one_and_skips_finished_ones_when_run_again(
        tmp_path, monkeypatch, backend):
    if backend == "ray":
        pytest.importorskip("ray")
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray started for the grid, stopped after
    good, bad = tiny_reach(), tiny_reach(utd=-3)
    cells = [GridCell(train_cell, (good, seed, str(tmp_path / f"sac_s{seed}")), tmp_path / f"sac_s{seed}", "sac", seed)
             for seed in (0, 1)]
    cells.append(GridCell(train_cell, (bad, 0, str(tmp_path / "bad_s0")), tmp_path / "bad_s0", "utd -3", 0))
    ended = []

    records = run_grid(cells, backend, workers=2, on_run=ended.append)
    assert [(r["setting"], r["seed"], r["status"]) for r in records] == [
        ("sac", 0, "done"), ("sac", 1, "done"), ("utd -3", 0, "failed")]  # the cells' order, whatever the finish
    assert sorted(ended, key=lambda r: r["out"]) == sorted(records, key=lambda r: r["out"])  # each, as it ended
    for record in records[:2]:
        assert record["env_steps"] == 100 and record["learner"] == "sac" and record["pid"] != os.getpid()
        assert json.loads((Path(record["out"]) / "metrics.json").read_text())["env_steps"] == 100
    assert "utd" in records[2]["error"]  # the run's own error, named with its setting
    report = grid_report(records)
    assert "1 of 3 runs failed" in report and "utd -3 seed 0" in report

    # the same grid again: the finished cells come back from their folders untouched, the failed one is retried
    again = run_grid(cells, backend, workers=2)
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed"]
    assert [r["pid"] for r in again[:2]] == [r["pid"] for r in records[:2]]
    assert "2 of 3 runs skipped" in grid_report(again)


def test_a_grid_refuses_two_cells_writing_one_folder(tmp_path):
    cells = [GridCell(train_cell, (tiny_reach(), seed, str(tmp_path)), tmp_path, "sac", seed) for seed in (0, 1)]
    with pytest.raises(HilrlError, match="own out"):
        run_grid(cells)
    with pytest.raises(HilrlError, match="--backend 'slurm'"):
        run_grid(cells[:1], backend="slurm")


@pytest.mark.slow  # 45 s; the grid runner itself is tested above on both backends
def test_sample_efficiency_benchmark_runs_its_grid_through_the_sweep_runner_and_continues(tmp_path):
    command = [sys.executable, "benchmarks/sample_efficiency.py", "--seeds", "0", "--steps", "200", "--eval-every",
               "200", "--eval-episodes", "2", "--demos", "2", "--set", "demos.bc_rollouts=0", "--set",
               "train.learning_starts=50", "--workers", "2", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = [line for line in first.stdout.splitlines() if line.startswith(("| hilrl RLPD", "| SB3 SAC"))]
    assert len(rows) == 4 and "| 0 | not within 200 |" in rows[0]  # per seed and mean, both learners
    for folder in ("hilrl_s0", "sb3_s0"):
        saved = json.loads((tmp_path / folder / "grid_cell.json").read_text())["record"]
        assert saved["status"] == "done" and saved["env_steps"] == 200
    assert "wall time of the whole benchmark" in first.stdout and "skipped" not in first.stdout

    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith(("| hilrl RLPD", "| SB3 SAC"))] == rows
    assert "2 of 2 runs skipped" in again.stdout
