"""Learning from few demos: what the demo buffer holds (demos cut after success, the policy's own
successes added) and the critic's values split by demo and online rows, through `hilrl train`."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hilrl.config import ConfigError, validate_config
from hilrl.data.hdf5 import DemoFile
from hilrl.runtime.train import train
from test_online import experiment, stored


def test_demos_cut_after_success_end_truncated_a_few_steps_after_it(tmp_path):
    raw = experiment(env={"id": "hilrl/PickCube-v0", "terminate_on_success": False},
                     demos={"episodes": 3, "keep_after_success": 4}, train={"steps": 150, "checkpoint_every": 150})
    train(validate_config(raw), tmp_path, show_progress=False)
    with DemoFile(tmp_path / "demos.hdf5") as file:  # the file keeps whole demos; the buffer holds the cut
        whole = [file.episode(name) for name in file.demo_names]
    firsts = [int(np.argmax(e.extras["is_success"])) for e in whole]
    assert all(len(e) == 100 for e in whole) and all(0 < f < 90 for f in firsts)
    demo = stored(tmp_path, "demo")
    lengths = np.bincount(-1 - demo["extras/episode"])
    assert list(lengths) == [f + 5 for f in firsts]
    ends = np.cumsum(lengths) - 1
    assert demo["truncated"][ends].all() and not demo["terminated"].any()
    assert demo["truncated"].sum() == 3, "only each cut demo's last step ends it"


def test_the_policys_successful_episodes_join_the_demo_buffer(tmp_path):
    # a simulated person does most of the work (RLIF stores its steps online only), so episodes succeed
    raw = experiment(demos={"episodes": 2, "add_successes": True, "keep_after_success": 2},
                     intervention={"source": "random", "learn_from": "rlif", "probability": 0.5, "duration": 30},
                     train={"steps": 400, "checkpoint_every": 400})
    train(validate_config(raw), tmp_path, show_progress=False)
    online, demo = stored(tmp_path, "online"), stored(tmp_path, "demo")
    successes = json.loads((tmp_path / "metrics.json").read_text())["successes"]
    ids = demo["extras/episode"]
    assert len(np.unique(ids)) == 2 + successes and successes >= 2
    for copied in np.unique(ids)[:-2]:  # the recorded demos hold the two highest ids (-1, -2)
        rows = np.hstack([demo["obs/ee_pos"], demo["obs/object"]])[ids == copied]
        steps = np.hstack([online["obs/ee_pos"], online["obs/object"]])
        match = np.flatnonzero((steps == rows[0]).all(axis=1))
        assert len(match) == 1, "a copy is one of the policy's own episodes"
        assert np.array_equal(steps[match[0]: match[0] + len(rows)], rows)
        assert demo["truncated"][ids == copied][-1] or demo["terminated"][ids == copied][-1]


def test_bc_rollouts_are_recorded_once_and_join_the_demo_buffer(tmp_path):
    """RLPD's few-demo setting: a BC policy fitted on the demos is rolled out and its episodes, failures
    included, join the demo buffer after the demos; a resumed run reads them from the run folder."""
    raw = experiment(demos={"episodes": 3, "bc_rollouts": 4}, train={"steps": 150, "checkpoint_every": 150})
    train(validate_config(raw), tmp_path, show_progress=False)
    with DemoFile(tmp_path / "demos.hdf5") as file:
        demos = [file.episode(name) for name in file.demo_names]
    with DemoFile(tmp_path / "bc_rollouts.hdf5") as file:
        rollouts = [file.episode(name) for name in file.demo_names]
    assert len(rollouts) == 4 and all(e.attrs["device"] == "bc" for e in rollouts)
    assert {e.attrs["seed"] for e in rollouts}.isdisjoint(e.attrs["seed"] for e in demos), "states the demos lack"
    demo = stored(tmp_path, "demo")
    assert len(np.unique(demo["extras/episode"])) == 7
    assert len(demo["actions"]) == sum(map(len, demos)) + sum(map(len, rollouts))
    rows = sum(map(len, demos))
    assert np.allclose(demo["actions"][rows: rows + len(rollouts[0])], rollouts[0].actions)
    # the BC policy's actions are not the expert's: they were not copied from the demos
    assert not np.allclose(rollouts[0].actions[:5], demos[0].actions[:5])
    stamp = (tmp_path / "bc_rollouts.hdf5").stat().st_mtime_ns
    train(validate_config({**raw, "train": {**raw["train"], "steps": 300}}), tmp_path, show_progress=False)
    assert (tmp_path / "bc_rollouts.hdf5").stat().st_mtime_ns == stamp, "a resumed run does not record again"


def test_add_successes_is_refused_where_no_online_loop_copies_them():
    with pytest.raises(ConfigError, match="demos.add_successes"):
        validate_config(experiment(demos={"episodes": 2, "add_successes": True}, algo={"name": "bc"}))
    with pytest.raises(ConfigError, match="demos.bc_rollouts"):
        validate_config(experiment(demos={"episodes": 0, "bc_rollouts": 5}))


def test_tensorboard_has_q_split_by_demo_and_online_rows_and_q_against_the_return(tmp_path):
    raw = experiment(train={"steps": 400, "log_every": 100, "checkpoint_every": 400})
    train(validate_config(raw), tmp_path, show_progress=False)
    (events,) = (tmp_path / "tb").glob("events.*") if (tmp_path / "tb").is_dir() else tmp_path.glob("**/events.*")
    scalars = EventAccumulator(str(events.parent))
    scalars.Reload()
    tags = set(scalars.Tags()["scalars"])
    for tag in ("train/q_demo", "train/q_online", "value/online_q_start", "value/online_return_start",
                "value/online_overestimation", "value/demo_q_start", "value/demo_return_start"):
        assert tag in tags, (tag, sorted(tags))
    q, g, gap = (scalars.Scalars(f"value/online_{k}")[-1].value for k in ("q_start", "return_start",
                                                                          "overestimation"))
    assert gap == pytest.approx(q - g, abs=1e-4) and np.isfinite([q, g]).all()
