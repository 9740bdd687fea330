"""robomimic-layout HDF5 files: layout, round trip, foreign files, damaged files, crash safety."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from hilrl.data.episode import Episode, EpisodeBuilder
from hilrl.data.hdf5 import DatasetError, DemoFile, DemoWriter


def read_episodes(path, filter_key=None):
    """Every episode of a demo file (or those under ``mask/<filter_key>``), as a user reads them with DemoFile."""
    with DemoFile(path) as demos:
        return [demos.episode(n) for n in (demos.filter(filter_key) if filter_key else demos.demo_names)]


def make_episode(steps: int, seed: int, image: bool = True) -> Episode:
    rng = np.random.default_rng(seed)
    obs = {"ee_pos": rng.normal(size=3).astype(np.float32)}
    if image:
        obs["front"] = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    builder = EpisodeBuilder(obs, state=rng.normal(size=5), seed=seed)
    for t in range(steps):
        nxt = {k: (v + 1).astype(v.dtype) for k, v in obs.items()}
        builder.add(rng.uniform(-1, 1, 4), float(t), nxt, t == steps - 1, False, rng.normal(size=5),
                    intervened=t % 2 == 0, policy_actions=np.zeros(4, np.float32))
        obs = nxt
    builder.attrs["success"] = True
    return builder.build()


def test_written_file_has_robomimic_layout(tmp_path):
    path = tmp_path / "d.hdf5"
    with DemoWriter(path, "hilrl/Reach-v0", {"cameras": ["front"]}) as writer:
        for i in range(12):
            writer.add(make_episode(5 + i, seed=i))

    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data.attrs["total"] == sum(5 + i for i in range(12))
        env_args = json.loads(data.attrs["env_args"])
        assert env_args == {"env_name": "hilrl/Reach-v0", "type": 2, "env_kwargs": {"cameras": ["front"]}}
        demo = data["demo_3"]
        assert demo.attrs["num_samples"] == 8
        assert demo["actions"].shape == (8, 4)
        assert demo["rewards"].shape == (8,) and demo["dones"].shape == (8,)
        assert demo["dones"][-1] == 1 and demo["dones"][:-1].sum() == 0
        assert demo["states"].shape == (8, 5)
        assert demo["obs/front"].dtype == np.uint8 and demo["obs/front"].shape == (8, 8, 8, 3)
        assert demo["next_obs/ee_pos"].shape == (8, 3)
        assert demo["intervened"].shape == (8,) and demo["policy_actions"].shape == (8, 4)
        train = [n.decode() for n in f["mask/train"][()]]
        valid = [n.decode() for n in f["mask/valid"][()]]
        assert sorted(train + valid, key=lambda n: int(n[5:])) == [f"demo_{i}" for i in range(12)]
        assert valid == ["demo_9"]


def test_round_trip_keeps_every_array(tmp_path):
    path = tmp_path / "d.hdf5"
    episodes = [make_episode(7, seed=s) for s in range(3)]
    with DemoWriter(path, "hilrl/Reach-v0") as writer:
        for ep in episodes:
            writer.add(ep)
    loaded = read_episodes(path)
    assert len(loaded) == 3
    for a, b in zip(episodes, loaded):
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.terminated, b.terminated)
        np.testing.assert_array_equal(a.truncated, b.truncated)
        np.testing.assert_array_equal(a.extras["intervened"], b.extras["intervened"])
        for key in a.obs:
            np.testing.assert_array_equal(a.obs[key], b.obs[key])
            np.testing.assert_array_equal(a.next_obs[key], b.next_obs[key])
        assert b.attrs["seed"] == a.attrs["seed"] and b.success


def test_append_continues_numbering(tmp_path):
    path = tmp_path / "d.hdf5"
    with DemoWriter(path, "hilrl/Reach-v0") as writer:
        writer.add(make_episode(3, 0))
    with DemoWriter(path, "hilrl/Reach-v0", append=True) as writer:
        assert writer.add(make_episode(3, 1)) == "demo_1"
    with DemoFile(path) as demos:
        assert demos.demo_names == ["demo_0", "demo_1"]
    with pytest.raises(DatasetError, match="not 'hilrl/Push-v0'"):
        DemoWriter(path, "hilrl/Push-v0", append=True)


def test_reads_a_foreign_robomimic_file(tmp_path):
    """A raw robomimic/robosuite file: states and actions only, no rewards/obs/terminated."""
    path = tmp_path / "robosuite.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i in range(2):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = 4
            demo.create_dataset("states", data=np.zeros((4, 10)))
            demo.create_dataset("actions", data=np.ones((4, 7)))
        f.create_group("mask").create_dataset("train", data=np.array([b"demo_1"]))
    episodes = read_episodes(path)
    assert [len(e) for e in episodes] == [4, 4]
    assert episodes[0].rewards.sum() == 0 and episodes[0].terminated[-1] and not episodes[0].truncated.any()
    assert [e.attrs["name"] for e in read_episodes(path, filter_key="train")] == ["demo_1"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        (b"this is not hdf5 at all", "not a readable HDF5 file"),
        ("nodata", "no 'data' group"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.hdf5"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "nodata":
        with h5py.File(path, "w") as f:
            f.create_group("something_else")
    with pytest.raises(DatasetError, match=message):
        DemoFile(path)


def test_truncated_file_is_reported_not_crashed(tmp_path):
    path = tmp_path / "d.hdf5"
    with DemoWriter(path, "hilrl/Reach-v0") as writer:
        for i in range(3):
            writer.add(make_episode(20, i))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError):
        read_episodes(path)


RECORDER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_demo_files import make_episode
from hilrl.data.hdf5 import DemoWriter
writer = DemoWriter({path!r}, "hilrl/Reach-v0")
for i in range(1000):
    writer.add(make_episode(30, i))
    print(i, flush=True)
    time.sleep(0.02)
"""


def test_kill_9_loses_at_most_the_episode_in_progress(tmp_path):
    path = tmp_path / "d.hdf5"
    script = RECORDER.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    written = -1
    deadline = time.monotonic() + 60
    while written < 5 and time.monotonic() < deadline:
        written = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written >= 5
    episodes = read_episodes(path)
    # every episode reported as written is there; at most one more may have completed meanwhile
    assert written + 1 <= len(episodes) <= written + 2
    assert all(len(e) == 30 for e in episodes)
