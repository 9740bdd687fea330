"""The `hilrl` command as a user runs it: real subprocesses, real files."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]


def hilrl(*args, cwd=None):
    return subprocess.run([*HILRL, *map(str, args)], capture_output=True, text=True, cwd=cwd or ROOT, timeout=600)


def test_envs_lists_the_four_tasks():
    result = hilrl("envs")
    assert result.returncode == 0, result.stderr
    for task in ("Reach", "Push", "PickCube", "PegInsert"):
        assert f"hilrl/{task}-v0" in result.stdout
    assert "add `cameras: [front, wrist]` under `env:`" in result.stdout, "the value is part of the hint"


def test_record_then_state_replay_is_exact(tmp_path):
    demos = tmp_path / "d.hdf5"
    rec = hilrl("record", ROOT / "sim_configs/reach.yaml", "--device", "expert", "--episodes", 3, "--out", demos)
    assert rec.returncode == 0, rec.stderr
    assert "recorded 3 episodes" in rec.stdout
    with h5py.File(demos, "r") as f:
        total = int(f["data"].attrs["total"])
    assert f"mean length {total / 3:.1f} steps ({total} steps in all)" in rec.stdout, rec.stdout
    rep = hilrl("replay", demos, "--mode", "states", "--video", tmp_path / "replay.mp4")
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 of 3 demos diverged" in rep.stdout
    assert (tmp_path / "replay.mp4").stat().st_size > 1000
    assert f"video: {tmp_path / 'replay.mp4'}" in rep.stdout

    # a tampered state must be caught, and the command must fail
    with h5py.File(demos, "a") as f:
        f["data/demo_1/states"][4] += 0.05
    bad = hilrl("replay", demos)
    assert bad.returncode == 1
    assert "1 of 3 demos diverged" in bad.stdout

    actions = hilrl("replay", demos, "--mode", "actions")
    assert actions.returncode == 0 and "actions replay" in actions.stdout


def test_a_replay_video_shows_each_demo_to_its_final_state_and_marks_where_it_ends(tmp_path):
    """States mode renders the state before each action and then the one the last action led to (the success);
    each frame is captioned and each demo's last frame held for a second (10 frames at Reach's 10 Hz)."""
    import imageio.v3 as iio

    demos, video = tmp_path / "d.hdf5", tmp_path / "replay.mp4"
    assert hilrl("record", ROOT / "sim_configs/reach.yaml", "--episodes", 2, "--out", demos).returncode == 0
    with h5py.File(demos, "r") as f:
        lengths = [len(f[f"data/demo_{i}/actions"]) for i in range(2)]
    for mode in ("states", "actions"):
        rep = hilrl("replay", demos, "--mode", mode, "--video", video)
        assert rep.returncode == 0, rep.stdout + rep.stderr
        assert f"video: {video}" in rep.stdout
        frames = iio.imread(video)
        assert len(frames) == sum(n + 1 for n in lengths) + 2 * 10, (mode, len(frames), lengths)
    end = lengths[0] + 1  # demo_0's last frame (its final state), then held
    held = frames[end - 1:end + 10, 20:].astype(int)  # below the caption, which says "end" on the held ones
    assert np.abs(held - held[0]).mean(axis=(1, 2, 3)).max() < 0.5, "the last frame is held"
    assert np.abs(frames[end + 10, 20:].astype(int) - held[0]).mean() > 2, "then demo_1 starts"
    strip = frames[0, :12].astype(int)
    assert strip.mean() < 60 and (strip.max(axis=-1) > 180).mean() > 0.01, "a dark caption strip with text"

    # the final transition is checked too: a changed last action is caught by the state replay
    with h5py.File(demos, "a") as f:
        f["data/demo_1/actions"][-1] = -f["data/demo_1/actions"][-1] + 0.5
    bad = hilrl("replay", demos)
    assert bad.returncode == 1 and "1 of 2 demos diverged" in bad.stdout, bad.stdout


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
    assert metrics["algo"] == "sac" and metrics["intervention_source"] == "person"
    assert metrics["learn_from"] == "hil_serl"
    assert metrics["env_steps"] == 400 and metrics["updates"] == 400 - 200 + 1
    assert 0 < metrics["intervened_steps"] < 400 and metrics["interventions"] > 0
    assert (run / "final_policy.mp4").stat().st_size > 0
    # the progress line tells the policy's own success apart from the episodes the person finished (issue 27)
    assert "own success" in trained.stderr and "assisted" in trained.stderr and "intervened" in trained.stderr
    assert 0 <= metrics["own_successes"] <= metrics["successes"]
    assert metrics["episodes_given_up"] >= 0  # episodes the person ended as failures (give_up_steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert {"rollout/own_success_rate", "rollout/assisted_success_rate",
            "rollout/intervention_rate"} <= set(events.Tags()["scalars"])


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


def test_steps_is_the_runs_total_and_a_run_that_has_them_has_nothing_to_train(tmp_path):
    """`hilrl train CONFIG --out RUN --steps N` on a finished run: says what it adds, or that there is nothing to do."""
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": 150, "learning_starts": 100, "eval_episodes": 2, "checkpoint_every": 150, "video": False}}))
    run = tmp_path / "run"
    first = hilrl("train", config, "--out", run)
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = (run / "metrics.json").read_text()

    for args, asked in [(("--steps", 10), "--steps 10"), ((), "train.steps 150")]:
        again = hilrl("train", config, "--out", run, *args)
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"{run} already has 150 env steps >= {asked}: nothing to train" in again.stdout, again.stdout
        assert f"hilrl eval {run}" in again.stdout
        assert "resuming" not in again.stderr and "eval" not in again.stderr, "nothing is trained or evaluated"
        assert (run / "metrics.json").read_text() == metrics
        assert [p.name for p in sorted((run / "checkpoints").glob("step_*.pt"))] == ["step_150.pt"]

    more = hilrl("train", config, "--out", run, "--steps", 200)
    assert more.returncode == 0, more.stderr[-2000:]
    assert f"resuming {run} at 150 env steps: 50 more to 200" in more.stderr, more.stderr[-2000:]
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 200

    # stopped after its last checkpoint, before its final evaluation: that evaluation is what is left to do
    (run / "metrics.json").unlink()
    finish = hilrl("train", config, "--out", run, "--steps", 200)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert "at 200 env steps: nothing more to train (train.steps 200), its final evaluation follows" in finish.stderr
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 200


# ---------------------------------------------------------------- --set KEY=VALUE (issue 25)
def installed_hilrl():
    """The `hilrl` script pip made from pyproject's [project.scripts] (next to this interpreter)."""
    script = Path(sys.executable).with_name("hilrl")
    assert script.is_file(), f"{script}: pip install -e . makes the `hilrl` script (pyproject [project.scripts])"
    return [str(script)]


def test_set_changes_what_train_runs_and_the_run_folder_records_it(tmp_path):
    """`hilrl train sim_configs/reach_hil.yaml --set train.steps=... --out RUN` through the installed script."""
    run = tmp_path / "run"
    sets = ["train.steps=300", "train.eval_episodes=1", "train.eval_every=0", "train.video=false",
            "demos.episodes=2", "algo.utd=1"]
    trained = subprocess.run([*installed_hilrl(), "train", "sim_configs/reach_hil.yaml",
                              *[arg for s in sets for arg in ("--set", s)], "--out", str(run)],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 300 and metrics["episodes"] == 1, metrics
    assert not (run / "final_policy.mp4").exists()
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["train"]["steps"] == 300 and recorded["train"]["eval_episodes"] == 1
    assert recorded["train"]["video"] is False and recorded["demos"]["episodes"] == 2
    assert recorded["algo"]["utd"] == 1
    with h5py.File(run / "demos.hdf5", "r") as f:
        assert len(f["data"]) == 2


def test_set_reaches_record_with_yaml_typed_values(tmp_path):
    demos = tmp_path / "d.hdf5"
    rec = hilrl("record", ROOT / "sim_configs/reach.yaml", "--set", "env.max_episode_steps=5", "--set",
                "env.terminate_on_success=false", "--episodes", 2, "--out", demos)
    assert rec.returncode == 0, rec.stderr[-2000:]
    assert "recorded 2 episodes" in rec.stdout and "10 steps" in rec.stdout


@pytest.mark.parametrize(
    "args, starts",
    [
        (("train", "{reach}", "--set", "algo.bacth_size=4"),
         "error: --set algo.bacth_size=4: unknown key 'algo.bacth_size' (did you mean 'batch_size'?)"),
        (("train", "{reach}", "--set", "trian.steps=5"),
         "error: --set trian.steps=5: unknown key 'trian' (did you mean 'train'?)"),
        (("train", "{reach}", "--set", "train.steps=-5"),
         "error: --set train.steps=-5: field 'train.steps': Input should be greater than or equal to 1 (got -5)"),
        (("train", "{reach}", "--steps", "-5"), "error: --steps -5: field 'train.steps': Input should be greater"),
        (("train", "{reach}", "--set", "env.cameras=[front, side]"),
         "error: --set env.cameras=[front, side]: field 'env.cameras.1': Input should be 'front' or 'wrist'"),
        (("train", "{reach}", "--set", "train.video=maybe"), "error: --set train.video=maybe: field 'train.video'"),
        (("train", "{reach}", "--set", "train.steps"), "error: --set train.steps: expected KEY=VALUE"),
        (("train", "{reach}", "--set", "train.steps=[1"), "error: --set train.steps=[1: the value is not valid YAML"),
        (("train", "{reach}", "--set", "train.steps=5", "--steps", "6"),
         "error: --set train.steps=5 and --steps 6 both set train.steps; give it once"),
        (("record", "{reach}", "--set", "env.contol_hz=5", "--out", "{tmp}/d.hdf5"),
         "error: --set env.contol_hz=5: unknown key 'env.contol_hz' (did you mean 'control_hz'?)"),
        (("learner", "{reach}", "--set", "train.stpes=5", "--out", "{tmp}/run"),
         "error: --set train.stpes=5: unknown key 'train.stpes' (did you mean 'steps'?)"),
        (("learner", "{reach}", "--steps", "0", "--out", "{tmp}/run"), "error: --steps 0: field 'train.steps'"),
        (("actor", "{reach}", "--set", "runtime.actor=2", "--learner", "tcp://127.0.0.1:1", "--out", "{tmp}/a"),
         "error: --set runtime.actor=2: unknown key 'runtime.actor' (did you mean 'actors'?)"),
    ],
)
def test_a_bad_override_is_one_line_that_names_the_flag(tmp_path, args, starts):
    reach = ROOT / "sim_configs/reach.yaml"
    result = hilrl(*[a.format(reach=reach, tmp=tmp_path) for a in args])
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(starts), result.stderr
    assert str(reach) not in result.stderr, "the value came from the flag, not the file"
    assert not list(tmp_path.iterdir()), "nothing ran"
