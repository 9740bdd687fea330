"""The reference critic of RLIF's value gate is built on first use, kept, and finished when half-built."""

import shutil
import time

import pytest

from hilrl.runtime import reference
from hilrl.runtime.train import ensure_reference_critic

STEPS = 300


@pytest.fixture
def tiny_reference(monkeypatch):
    """The library's recipe shrunk to seconds: small nets, few demos, updates from step 100, a checkpoint every 100."""
    recipe = reference.reference_experiment

    def tiny(task, steps, seed=0):
        config = recipe(task, steps, seed)
        config["demos"]["episodes"] = 2
        config["algo"].update(num_critics=2, hidden=[32, 32], batch_size=32)
        config["train"].update(learning_starts=100, eval_episodes=2, checkpoint_every=100)
        return config

    monkeypatch.setattr(reference, "reference_experiment", tiny)


@pytest.fixture
def built(tiny_reference, tmp_path_factory, capsys):
    path = tmp_path_factory.mktemp("qref") / "qref_push"
    assert ensure_reference_critic(path, "hilrl/Push-v0", STEPS, show_progress=False) == path
    return path, capsys.readouterr().err


def test_reference_experiment_is_the_recipe_and_deterministic():
    push = reference.reference_experiment("Push", 8000)
    assert push == reference.reference_experiment("Push", 8000)  # a half-built run resumes under the same config
    assert push["env"] == {"id": "hilrl/Push-v0", "reward_type": "dense_cost", "terminate_on_success": True,
                           "relative_positions": True}
    assert push["algo"]["num_critics"] == 10 and push["train"]["checkpoint_every"] == 8000
    pick = reference.reference_experiment("PickCube", 20000, seed=3)
    assert pick["algo"]["utd"] == 8 and pick["train"]["seed"] == 3 and pick["train"]["video"] is False


def test_first_use_builds_a_loadable_sac_run_and_says_so(built, capsys):
    from hilrl.runtime.run import load_policy

    path, said = built
    assert "reference critic" in said and "first use" in said and str(path) in said and f"{STEPS} env steps" in said
    assert f"benchmarks/train_reference_critic.py --task Push --steps {STEPS} --out {path}" in said
    config, sac, _ = load_policy(path)
    assert sac.algo_name == "sac" and config.env.id == "hilrl/Push-v0"

    stamp = (path / "metrics.json").stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_reference_critic(path, "Push", STEPS) == path
    assert time.perf_counter() - started < 1.0
    assert (path / "metrics.json").stat().st_mtime_ns == stamp
    assert capsys.readouterr().err == ""  # nothing to build, nothing said


def test_a_reference_killed_mid_way_is_finished_not_restarted(built, tmp_path, capsys):
    import json

    half = tmp_path / "qref_half"
    shutil.copytree(built[0], half)
    # killed after its last checkpoint, before metrics.json (a checkpoint names its buffers, and only the
    # newest checkpoint keeps them: that is the one a killed run resumes from)
    (half / "metrics.json").unlink()
    first = (half / "checkpoints" / "step_100.pt").stat().st_mtime_ns

    ensure_reference_critic(half, "Push", STEPS, show_progress=False)
    said = capsys.readouterr().err
    assert "half-built" in said and f"step_{STEPS}.pt" in said  # resumed from the last checkpoint
    assert json.loads((half / "metrics.json").read_text())["env_steps"] == STEPS
    assert (half / "checkpoints" / "step_100.pt").stat().st_mtime_ns == first  # not trained again from zero


def test_unknown_task_names_are_refused(tmp_path):
    from hilrl.errors import HilrlError

    with pytest.raises(HilrlError, match="Push"):
        ensure_reference_critic(tmp_path / "q", "gym/Push v0", 100)
