"""`hilrl sweep` as a user runs it: a tiny grid of seeds × settings on the local pool, its summary table, and the
same command continuing and then skipping the runs it holds."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hilrl.errors import HilrlError
from hilrl.runtime.sweep import parse_grid, plan, summarise

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
