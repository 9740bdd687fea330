"""Online RL through `hilrl train`: interventions stored as HIL-SERL and RLIF prescribe, and resume."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from hilrl.config import validate_config
from hilrl.runtime.train import train

ROOT = Path(__file__).parents[1]


def experiment(**sections):
    raw = {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": 300, "learning_starts": 100, "eval_episodes": 2, "checkpoint_every": 300, "video": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def stored(run, name):
    (path,) = (run / "checkpoints").glob(f"replay_{name}_*.npz")  # the newest checkpoint's buffers only
    with np.load(path) as f:
        return {k.replace("::", "/"): f[k] for k in f.files}


def test_rlif_gives_minus_one_to_the_agent_step_before_each_intervention(tmp_path):
    cfg = validate_config(experiment(intervention={"source": "random", "learn_from": "rlif", "probability": 0.15,
                                                   "duration": 3}))
    train(cfg, tmp_path, show_progress=False)
    online = stored(tmp_path, "online")
    counters = json.loads((tmp_path / "metrics.json").read_text())
    rewards, intervened = online["rewards"], online["extras/intervened"].astype(bool)
    episode_start = np.r_[True, (online["terminated"] | online["truncated"])[:-1]]
    starts = intervened & ~np.r_[False, intervened[:-1]] | (intervened & episode_start)
    labelled_starts = starts & ~episode_start  # a segment at t = 0 has no agent step before it
    assert counters["interventions"] == starts.sum() > 5
    assert (rewards == -1).sum() == labelled_starts.sum()
    minus_one = np.flatnonzero(rewards == -1)
    assert not intervened[minus_one].any(), "-1 must sit on the agent's own action"
    assert intervened[minus_one + 1].all() and starts[minus_one + 1].all()
    assert set(np.unique(rewards)) <= {0.0, -1.0}, "RLIF discards the env reward"
    assert len(rewards) == 300, "every transition is stored, the terminal ones included"
    assert (stored(tmp_path, "demo")["rewards"] == 0).all(), "demos enter RLIF with reward 0"


def test_hil_serl_stores_executed_action_and_copies_interventions_to_demos(tmp_path):
    cfg = validate_config(experiment(intervention={"source": "random", "learn_from": "hil_serl", "probability": 0.2}))
    train(cfg, tmp_path, show_progress=False)
    online, demo = stored(tmp_path, "online"), stored(tmp_path, "demo")
    intervened = online["extras/intervened"].astype(bool)
    demo_len = len(demo["actions"])

    with h5py.File(tmp_path / "demos.hdf5", "r") as f:
        recorded = int(f["data"].attrs["total"])
    assert intervened.sum() > 20
    assert demo_len == recorded + intervened.sum()
    # the copies are exactly the intervened online transitions, in order
    np.testing.assert_array_equal(demo["actions"][recorded:], online["actions"][intervened])
    # executed (expert) actions differ from what the policy proposed on intervened steps only
    differs = np.abs(online["actions"] - online["extras/policy_action"]).max(axis=1) > 1e-6
    assert differs[intervened].mean() > 0.9 and not differs[~intervened].any()
    assert not (online["rewards"] == 0).all(), "HIL-SERL keeps the env reward"


def test_resume_after_stop_keeps_counters_and_keeps_learning(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment(train={"steps": 300, "checkpoint_every": 150})))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(run)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    before = json.loads((run / "metrics.json").read_text())
    assert (before["env_steps"], before["updates"]) == (300, 201)

    second = subprocess.run([*cmd, "--steps", "450"], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming" in second.stderr and "300 env steps" in second.stderr
    after = json.loads((run / "metrics.json").read_text())
    assert after["env_steps"] == 450 and after["updates"] == 351
    assert after["train_episodes"] > before["train_episodes"]
    assert len(stored(run, "online")["actions"]) == 450

    import torch

    state = torch.load(run / "checkpoints" / "step_450.pt", weights_only=False)
    assert state["state"]["counters"]["num_updates"] == 351


def test_keep_best_makes_the_best_evaluated_checkpoint_the_runs_policy(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hilrl.runtime.run import evaluate_run

    cfg = validate_config(experiment(train={"steps": 400, "eval_every": 100, "eval_episodes": 5, "keep_best": True}))
    run = tmp_path / "run"
    result = train(cfg, run, show_progress=False)

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    validation = {e.step: e.value for e in events.Scalars("eval/success_rate")}
    assert sorted(validation) == [100, 200, 300, 400]  # the last iterate competes too
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["best_validation"]
    assert best["success_rate"] == max(validation.values())
    assert best["step"] == min(s for s, v in validation.items() if v == best["success_rate"])  # first of ties

    # the final evaluation, `hilrl eval` and anything loading the run use best.pt
    assert result.checkpoint.endswith("best.pt") and metrics["checkpoint"].endswith("best.pt")
    assert evaluate_run(run, episodes=2, show_progress=False).checkpoint.endswith("best.pt")
    import torch

    assert torch.load(run / "checkpoints" / "best.pt", weights_only=False)["counters"]["env_steps"] == best["step"]


def test_keep_best_outside_the_online_sac_loop_is_refused(tmp_path):
    from hilrl.errors import HilrlError

    with pytest.raises(HilrlError, match="keep_best works in the online SAC loop"):  # refused by the config now
        cfg = validate_config(experiment(algo={"name": "bc", "obs_keys": ["ee_pos", "object"]},
                                         train={"keep_best": True, "eval_every": 100}))
        train(cfg, tmp_path / "run", show_progress=False)


def test_kl_to_bc_runs_from_a_config_and_its_prior_travels_with_the_checkpoint(tmp_path):
    import torch

    from hilrl.runtime.run import load_policy

    config = validate_config(experiment(algo={"variants": {"kl_coef": 0.5, "bc_prior_updates": 200}}))
    result = train(config, tmp_path / "run", show_progress=False)
    assert 0.0 <= result.success_rate <= 1.0
    _, sac, _ = load_policy(tmp_path / "run")
    assert sac.bc_prior is not None and sac.bc_prior.is_fitted
    demo = stored(tmp_path / "run", "demo")
    obs = {k: torch.as_tensor(demo[f"obs/{k}"]) for k in sac.bc_prior.keys}
    log_prob = sac.bc_prior.log_prob(obs, torch.as_tensor(demo["actions"]))
    assert torch.isfinite(log_prob).all()
    # the prior prefers the demonstrated actions to the opposite ones
    assert (log_prob - sac.bc_prior.log_prob(obs, -torch.as_tensor(demo["actions"]))).mean() > 1.0


def test_bc_proposals_run_from_a_config_and_the_loaded_policy_acts_with_them(tmp_path):
    import torch

    from hilrl.runtime.run import load_policy

    config = validate_config(experiment(demos={"episodes": 10},
                                        algo={"variants": {"bc_proposal": True, "bc_prior_updates": 1500}}))
    train(config, tmp_path / "run", show_progress=False)
    _, sac, _ = load_policy(tmp_path / "run")
    assert sac.bc_prior is not None and sac.bc_prior.is_fitted and sac.bc_policy is None
    demo = stored(tmp_path / "run", "demo")
    obs = {k: torch.as_tensor(demo[f"obs/{k}"]) for k in sac.bc_prior.keys}
    proposal = sac.bc_prior.mean_action(obs)
    assert (proposal - torch.as_tensor(demo["actions"])).abs().mean() < 0.1  # the prior imitates the demos
    acted = torch.as_tensor(sac.act({k: demo[f"obs/{k}"] for k in sac.keys}, deterministic=True))
    from_proposal = torch.isclose(acted, proposal).all(-1)
    from_actor = torch.isclose(acted, sac.actor.deterministic(sac.encoder(obs))).all(-1)
    assert (from_proposal | from_actor).all() and from_proposal.any()


def test_a_run_folder_is_not_resumed_under_another_config(tmp_path):
    from hilrl.errors import HilrlError

    run = tmp_path / "run"
    train(validate_config(experiment(train={"steps": 150, "checkpoint_every": 150})), run, show_progress=False)
    recorded = (run / "config.yaml").read_text()
    other = experiment(train={"steps": 300, "checkpoint_every": 150}, env={"relative_positions": True})
    with pytest.raises(HilrlError, match=r"env.relative_positions: False -> True.*new --out"):
        train(validate_config(other), run, show_progress=False)
    assert (run / "config.yaml").read_text() == recorded  # the record of what ran is kept


def test_one_rule_finds_a_runs_newest_checkpoint_and_an_older_hilrls_is_named(tmp_path):
    import torch

    from hilrl.errors import HilrlError
    from hilrl.runtime.run import latest_checkpoint, load_policy

    run = tmp_path / "run"
    raw = experiment(train={"steps": 150, "checkpoint_every": 150})
    train(validate_config(raw), run, show_progress=False)
    path, state = latest_checkpoint(run)
    assert path.name == "step_150.pt" and load_policy(run)[2] == path  # resumed from and evaluated: the same one

    del state["stream"]  # a checkpoint of a format this hilrl no longer reads
    torch.save(state, path)
    with pytest.raises(HilrlError, match="older hilrl.*new --out folder"):
        train(validate_config({**raw, "train": {**raw["train"], "steps": 300}}), run, show_progress=False)

    for name in state["replay"].values():  # a run copied without its buffers: no complete checkpoint
        (run / "checkpoints" / name).unlink()
    assert latest_checkpoint(run) is None
    with pytest.raises(HilrlError, match="no complete checkpoint.*step_150.pt"):
        load_policy(run)
    assert load_policy(path)[2] == path  # the file itself still loads
