"""Replay buffers: storage, ring order, extras, persistence and the mixed online/demo sampler."""

import mmap
import sys

import gymnasium as gym
import numpy as np
import pytest

from hilrl.data.buffers import ReplayBuffer, mixed_sample
from hilrl.errors import HilrlError

OBS_SPACE = gym.spaces.Dict({
    "ee_pos": gym.spaces.Box(-1, 1, (3,), np.float32),
    "front": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8),
})
ACT_SPACE = gym.spaces.Box(-1, 1, (2,), np.float32)


def transitions(n, start=0, reward=None):
    """``n`` transitions whose values encode their index ``start + i`` (to check order after wrap-around)."""
    ids = np.arange(start, start + n, dtype=np.float32)
    obs = {"ee_pos": np.repeat(ids[:, None], 3, 1), "front": np.full((n, 8, 8, 3), ids[:, None, None, None] % 256,
                                                                     np.uint8)}
    next_obs = {"ee_pos": obs["ee_pos"] + 0.5, "front": obs["front"]}
    actions = np.stack([ids, -ids], 1) / 1000.0
    rewards = ids if reward is None else np.full(n, reward, np.float32)
    terminated = ids % 3 == 0
    truncated = ids % 5 == 0
    return obs, actions, rewards, next_obs, terminated, truncated


def test_add_and_extend_store_values_and_dtypes():
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 10)
    obs, actions, rewards, next_obs, term, trunc = transitions(4)
    buf.extend(obs, actions, rewards, next_obs, term, trunc, intervened=np.array([0, 1, 0, 1], bool))
    buf.add({k: v[0] for k, v in obs.items()}, actions[0], 7.0, {k: v[0] for k, v in next_obs.items()},
            False, True, intervened=True)
    assert len(buf) == 5
    batch = buf.gather(np.arange(5))
    assert batch["obs"]["front"].dtype == np.uint8 and batch["obs"]["front"].shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(batch["rewards"], [0, 1, 2, 3, 7])
    np.testing.assert_array_equal(batch["terminated"], [True, False, False, True, False])
    np.testing.assert_array_equal(batch["truncated"], [True, False, False, False, True])
    np.testing.assert_array_equal(batch["intervened"], [False, True, False, True, True])
    np.testing.assert_allclose(batch["next_obs"]["ee_pos"][:, 0], [0.5, 1.5, 2.5, 3.5, 0.5])


def test_ring_buffer_overwrites_oldest():
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 5)
    buf.extend(*transitions(4))
    buf.extend(*transitions(4, start=4))
    assert len(buf) == 5 and buf.full
    assert sorted(buf.rewards.tolist()) == [3, 4, 5, 6, 7]
    buf.extend(*transitions(12, start=100))  # more than capacity at once: keep the newest 5
    assert sorted(buf.rewards.tolist()) == [107, 108, 109, 110, 111]


def test_sample_is_uniform_over_stored_and_reproducible():
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 100)
    buf.extend(*transitions(10))
    a = buf.sample(4000, np.random.default_rng(1))
    b = buf.sample(4000, np.random.default_rng(1))
    np.testing.assert_array_equal(a["rewards"], b["rewards"])
    counts = np.bincount(a["rewards"].astype(int), minlength=10)
    assert counts.min() > 300 and counts.max() < 500  # 400 expected per slot
    # obs and next_obs of one sample stay aligned
    np.testing.assert_allclose(a["next_obs"]["ee_pos"], a["obs"]["ee_pos"] + 0.5)


@pytest.mark.parametrize("bad, message", [
    (dict(actions=np.zeros((3, 5), np.float32)), "actions have shape"),
    (dict(obs={"ee_pos": np.zeros((3, 3), np.float32)}), "lacks observation keys"),
    (dict(rewards=np.zeros(2, np.float32)), "rewards has shape"),
])
def test_bad_input_names_the_problem(bad, message):
    obs, actions, rewards, next_obs, term, trunc = transitions(3)
    args = dict(obs=obs, actions=actions, rewards=rewards, next_obs=next_obs, terminated=term, truncated=trunc)
    args.update(bad)
    with pytest.raises(HilrlError, match=message):
        ReplayBuffer(OBS_SPACE, ACT_SPACE, 10).extend(**args)


def test_extras_must_be_consistent():
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 10)
    buf.extend(*transitions(2))
    with pytest.raises(HilrlError, match="first appears after"):
        buf.extend(*transitions(2), intervened=np.zeros(2, bool))
    declared = ReplayBuffer(OBS_SPACE, ACT_SPACE, 10, extras={"intervened": ((), bool)})
    with pytest.raises(HilrlError, match="lack extras"):
        declared.extend(*transitions(2))
    with pytest.raises(HilrlError, match="empty replay buffer"):
        declared.sample(1, np.random.default_rng(0))


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_load_round_trip_after_wrap(tmp_path, suffix):
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 6)
    buf.extend(*transitions(9), policy_action=np.arange(18, dtype=np.float32).reshape(9, 2))
    path = buf.save(tmp_path / f"online{suffix}")
    assert path.is_file() and not (tmp_path / f"online{suffix}.tmp").exists()
    other = ReplayBuffer(OBS_SPACE, ACT_SPACE, 6)
    other.load(path)
    assert len(other) == 6
    order = np.argsort(buf.rewards)
    loaded_order = np.argsort(other.rewards)
    for key in ("rewards", "terminated", "truncated", "actions"):
        np.testing.assert_array_equal(getattr(buf, key)[order], getattr(other, key)[loaded_order])
    np.testing.assert_array_equal(buf.obs["front"][order], other.obs["front"][loaded_order])
    np.testing.assert_array_equal(buf.extras["policy_action"][order], other.extras["policy_action"][loaded_order])
    # the next write overwrites the oldest transition, as it would have before saving
    other.extend(*transitions(1, start=50), policy_action=np.zeros((1, 2), np.float32))
    assert sorted(other.rewards.tolist()) == [4, 5, 6, 7, 8, 50]


def test_load_rejects_other_spaces(tmp_path):
    buf = ReplayBuffer(OBS_SPACE, ACT_SPACE, 4)
    buf.extend(*transitions(2))
    path = buf.save(tmp_path / "b.npz")
    other_space = gym.spaces.Dict({"joint_pos": gym.spaces.Box(-1, 1, (7,), np.float32)})
    with pytest.raises(HilrlError, match="observation keys"):
        ReplayBuffer(other_space, ACT_SPACE, 4).load(path)
    with pytest.raises(HilrlError, match="suffix"):
        buf.save(tmp_path / "b.pkl")


def test_mixed_sample_keeps_the_demo_fraction_in_every_slice():
    online = ReplayBuffer(OBS_SPACE, ACT_SPACE, 100)
    demo = ReplayBuffer(OBS_SPACE, ACT_SPACE, 100)
    online.extend(*transitions(50, reward=0.0), intervened=np.zeros(50, bool))
    demo.extend(*transitions(20, reward=1.0))
    rng = np.random.default_rng(0)
    batch = mixed_sample(online, demo, 16, rng, demo_fraction=0.5, num_slices=3)
    assert batch["rewards"].shape == (48,)
    assert "intervened" not in batch  # only extras both buffers store
    for k in range(3):
        assert batch["rewards"][k * 16:(k + 1) * 16].sum() == 8
    quarter = mixed_sample(online, demo, 16, rng, demo_fraction=0.25)
    assert quarter["rewards"].sum() == 4
    empty_demo = ReplayBuffer(OBS_SPACE, ACT_SPACE, 10)
    assert mixed_sample(online, empty_demo, 16, rng)["rewards"].sum() == 0
    assert mixed_sample(online, None, 16, rng)["rewards"].sum() == 0
    only_demo = mixed_sample(ReplayBuffer(OBS_SPACE, ACT_SPACE, 10), demo, 16, rng)
    assert only_demo["rewards"].sum() == 16
    with pytest.raises(HilrlError, match="demo_fraction"):
        mixed_sample(online, demo, 16, rng, demo_fraction=1.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/mincore are Linux calls")
def test_page_ahead_faults_in_image_rows_just_past_the_head_and_leaves_the_data_alone():
    from hilrl.data.paging import PageAhead, resident_fraction as resident

    space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (3,), np.float32),
                             "front": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})  # 12 KiB rows
    ring = ReplayBuffer(space, ACT_SPACE, 4096)  # 48 MiB of images, none of it touched yet
    front = ring.obs["front"]
    pager = PageAhead(ring.obs.values(), window_bytes=8 << 20)
    try:
        if not pager.active:
            pytest.skip(pager.refused or "this kernel does not populate pages on request")
        assert [a.shape for a in pager.arrays] == [front.shape]  # state rows are too small to page
        window = pager.window_rows
        control = np.frombuffer(mmap.mmap(-1, 8 << 20), np.uint8).reshape(-1, 4096)  # never touched
        if resident(control, slice(0, len(control))) > 0:
            pytest.skip("mincore here reports memory never touched as in RAM")
        assert resident(front, slice(0, 4096)) == 0.0
        pager.advance(0)
        assert pager.wait(10)
        assert resident(front, slice(0, window)) == 1.0
        assert resident(front, slice(window + 400, 4096)) < 0.1  # 400 rows: room for one huge page

        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (1500, 64, 64, 3), dtype=np.uint8)
        for start in range(0, 1500, 100):  # the ring fills while the thread pages ahead of it
            n = 100
            ring.extend({"state": np.zeros((n, 3), np.float32), "front": images[start:start + n]},
                        np.zeros((n, 2), np.float32), np.zeros(n, np.float32),
                        {"state": np.zeros((n, 3), np.float32), "front": images[start:start + n]},
                        np.zeros(n, bool), np.zeros(n, bool))
            pager.advance(len(ring))
        assert pager.wait(10)
        np.testing.assert_array_equal(front[:1500], images)
        assert resident(front, slice(1500, 1500 + window)) == 1.0
        assert resident(front, slice(1500 + window + 400, 4096)) < 0.1
    finally:
        pager.close()
    assert not pager.active
