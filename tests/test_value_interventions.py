"""RLIF's value-based interventionist, wired from a reference SAC checkpoint through the config."""

import numpy as np
import pytest

from hilrl.config import validate_config
from hilrl.feedback.interventions import ValueInterventionist
from hilrl.runtime.train import train


def test_value_gate_follows_the_reference_critic():
    expert = lambda obs: np.ones(2, np.float32)  # noqa: E731
    # Q_ref prefers actions close to the expert's: the policy's zero action is worse than beta * Q(expert)
    q_ref = lambda obs, a: 10.0 - float(np.abs(a - 1.0).sum())  # noqa: E731
    gate = ValueInterventionist(expert, q_ref, beta=0.97, duration=4, seed=0)
    gate.reset()
    decisions = [gate({}, np.zeros(2, np.float32)) is not None for _ in range(400)]
    assert np.mean(decisions) > 0.9  # p = 0.95, then 4 expert steps per trigger
    gate.reset()
    good = [gate({}, np.ones(2, np.float32)) is not None for _ in range(2000)]
    # a policy as good as the expert is still checked with p = 0.05, each trigger holding for 4 steps
    assert 0.08 < np.mean(good) < 0.3


def test_value_interventions_from_a_reference_checkpoint(tmp_path):
    base = {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": 200, "learning_starts": 100, "eval_episodes": 1, "checkpoint_every": 200, "video": False},
    }
    train(validate_config(base), tmp_path / "reference", show_progress=False)
    rlif = {**base, "intervention": {"source": "value", "learn_from": "rlif", "q_ref": str(tmp_path / "reference"),
                                     "expert_noise": 0.1}}
    train(validate_config(rlif), tmp_path / "rlif", show_progress=False)
    (path,) = (tmp_path / "rlif" / "checkpoints").glob("replay_online_*.npz")
    with np.load(path) as f:
        intervened = f["extras::intervened"].astype(bool)
        rewards = f["rewards"]
        done = f["terminated"] | f["truncated"]
    assert intervened.any() and not intervened.all()
    # once triggered the expert holds for 4 steps: back-to-back triggers merge into longer segments, and only an
    # episode end (or the end of the run) can cut a segment short
    boundaries = np.flatnonzero(np.diff(np.r_[0, intervened.astype(int), 0]))
    starts, stops = boundaries[::2], boundaries[1::2]
    cut = done[stops - 1] | (stops == len(intervened))
    assert ((stops - starts)[~cut] >= 4).all()
    assert (~cut).sum() >= 5  # enough whole segments for the check above (5 since the gate judges the intended action)
    assert (rewards == -1).sum() > 0


def test_a_missing_reference_critic_is_built_on_first_use(tmp_path, capsys):
    """A ready RLIF experiment runs as it is: the reference critic its gate reads is trained where q_ref points."""
    q_ref = tmp_path / "qref_push"
    cfg = validate_config({
        "env": {"id": "hilrl/Push-v0", "max_episode_steps": 20, "relative_positions": True}, "demos": {"episodes": 0},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32},
        "intervention": {"source": "value", "q_ref": str(q_ref), "learn_from": "rlif", "q_ref_steps": 300},
        "train": {"steps": 30, "learning_starts": 10, "eval_episodes": 1, "video": False},
    })
    train(cfg, tmp_path / "run", show_progress=False)
    assert "building it now, on first use" in capsys.readouterr().err
    assert (q_ref / "metrics.json").is_file() and (q_ref / "checkpoints" / "step_300.pt").is_file()
    built = (q_ref / "metrics.json").stat().st_mtime_ns
    train(cfg, tmp_path / "again", show_progress=False)
    assert (q_ref / "metrics.json").stat().st_mtime_ns == built, "a built reference is reused, not retrained"


@pytest.mark.slow
def test_the_push_rlif_experiment_runs_as_shipped(tmp_path):
    """`hilrl train sim_configs/push_rlif.yaml` on a clean checkout: builds artifacts/qref_push, then trains."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).parents[1] / "sim_configs" / "push_rlif.yaml"
    result = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(config), "--steps", "600", "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "building it now, on first use" in result.stderr
    assert (tmp_path / "artifacts" / "qref_push" / "metrics.json").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["env_steps"] == 600 and metrics["interventions"] > 0 and metrics["learn_from"] == "rlif"
