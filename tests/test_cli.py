"""The `hilrl` command as a user runs it: real subprocesses, real files."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]


def hilrl(*args, cwd=None):
    return subprocess.run([*HILRL, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, timeout=600)


def test_envs_lists_the_four_tasks():
    result = hilrl("envs")
    assert result.returncode == 0, result.stderr
    for task in ("Reach", "Push", "PickCube", "PegInsert"):
        assert f"hilrl/{task}-v0" in result.stdout


def test_record_then_state_replay_is_exact(tmp_path):
    demos = tmp_path / "d.hdf5"
    rec = hilrl("record", ROOT / "sim_configs/reach.yaml", "--device", "expert", "--episodes", 3, "--out", demos)
    assert rec.returncode == 0, rec.stderr
    assert "recorded 3 episodes" in rec.stdout
    rep = hilrl("replay", demos, "--mode", "states", "--video", tmp_path / "replay.mp4")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 of 3 demos diverged" in rep.stdout
    assert (tmp_path / "replay.mp4").stat().st_size > 1000

    # a tampered state must be caught, and the command must fail
    with h5py.File(demos, "a") as f:
        f["data/demo_1/states"][4] += 0.05
    bad = hilrl("replay", demos)
    assert bad.returncode == 1
    assert "1 of 3 demos diverged" in bad.stdout

    actions = hilrl("replay", demos, "--mode", "actions")
    assert actions.returncode == 0 and "actions replay" in actions.stdout


def test_user_errors_are_one_line(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "sim_configs/reach.yaml").read_text().replace("  episodes: 50", "  epsiodes: 50"))
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    for args, needle in [
        (("train", typo), "did you mean 'episodes'"),
        (("train", tmp_path / "missing.yaml"), "config file not found"),
        (("replay", junk), "not a readable HDF5 file"),
        (("replay", tmp_path / "none.hdf5"), "no such file"),
        (("eval", tmp_path), "no checkpoints"),
    ]:
        result = hilrl(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert needle in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bc_on_expert_reach_demos_succeeds(tmp_path):
    """50 expert demos of Reach -> BC -> `hilrl eval` >= 90% success (issue 2 acceptance)."""
    run = tmp_path / "run"
    trained = hilrl("train", ROOT / "sim_configs/reach.yaml", "--out", run)
    assert trained.returncode == 0, trained.stderr[-2000:]
    for name in ("config.yaml", "metrics.json", "demos.hdf5", "final_policy.mp4", "checkpoints/step_3000.pt"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    with h5py.File(run / "demos.hdf5", "r") as f:
        assert len(f["data"]) == 50

    evaluated = hilrl("eval", run, "--episodes", 50, "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["episodes"] == 50
    assert metrics["success_rate"] >= 0.9, metrics
    assert np.isfinite(metrics["mean_return"])


def test_the_demo_job_runs_rl_with_a_simulated_person(tmp_path):
    """`make demo`'s config, shortened: online SAC where the simulated person steps in and is learned from."""
    run = tmp_path / "run"
    trained = hilrl("train", ROOT / "sim_configs/reach_hil.yaml", "--steps", 400, "--out", run)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["algo"] == "sac" and metrics["intervention_source"] == "distance"
    assert metrics["learn_from"] == "hil_serl"
    assert metrics["env_steps"] == 400 and metrics["updates"] == 400 - 200 + 1
    assert 0 < metrics["intervened_steps"] < 400 and metrics["interventions"] > 0
    assert (run / "final_policy.mp4").stat().st_size > 0


@pytest.mark.parametrize("task", ["push", "pick_cube", "peg_insert"])
def test_every_task_records_with_cameras_and_replays_exactly(tmp_path, task):
    config = tmp_path / f"{task}.yaml"
    config.write_text((ROOT / f"sim_configs/{task}.yaml").read_text().replace("cameras: []", "cameras: [front, wrist]"))
    demos = tmp_path / "d.hdf5"
    rec = hilrl("record", config, "--episodes", 2, "--out", demos)
    assert rec.returncode == 0, rec.stderr[-2000:]
    assert "success 100%" in rec.stdout
    with h5py.File(demos, "r") as f:
        front = f["data/demo_0/obs/front"]
        assert front.dtype == np.uint8 and front.shape[1:] == (128, 128, 3)
        assert f["data/demo_0/next_obs/wrist"].shape == front.shape
        assert front[()].std() > 5, "camera images are not blank"
    rep = hilrl("replay", demos)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 of 2 demos diverged" in rep.stdout
