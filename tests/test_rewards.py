"""Reward sources (door 2): what the config builds, how buffers cache and recompute them, what a run trains on."""

import gymnasium as gym
import numpy as np
import pytest

from hilrl.config import ConfigError, RewardConfig, validate_config
from hilrl.data.buffers import Replay, ReplayBuffer
from hilrl.errors import HilrlError
from hilrl.feedback.rewards import EnvReward, RLIFReward, TermReward, WeightedSum, make_reward_source
from hilrl.runtime.steps import TransitionStorage

OBS = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (2,), np.float32)})
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)


def steps(n, rng, intervened=None, **extra):
    return {"obs": {"state": rng.normal(size=(n, 2)).astype(np.float32)},
            "next_obs": {"state": rng.normal(size=(n, 2)).astype(np.float32)}, "own_next": np.ones(n, bool),
            "action": rng.normal(size=(n, 2)).astype(np.float32), "policy_action": np.zeros((n, 2), np.float32),
            "reward": np.arange(n, dtype=np.float32), "terminated": np.zeros(n, bool), "truncated": np.zeros(n, bool),
            "intervened": np.zeros(n, bool) if intervened is None else np.asarray(intervened), **extra}


class Counting:
    """A source that counts its calls and rows: reward = 10 * version + env reward."""

    def __init__(self):
        self.version, self.calls = 0, []

    def __call__(self, batch):
        self.calls.append(len(batch))
        return 10.0 * self.version + batch.env_rewards


def test_the_config_builds_env_rlif_term_sums_and_weights():
    assert isinstance(make_reward_source(RewardConfig.model_validate("env")), EnvReward)
    assert isinstance(make_reward_source(RewardConfig.model_validate("rlif")), RLIFReward)
    term = make_reward_source(RewardConfig(source="term", term="reach"))
    assert isinstance(term, TermReward) and term.name == "reach"
    total = make_reward_source(RewardConfig.model_validate(
        {"source": "sum", "parts": [{"source": "env", "weight": 0.5}, {"source": "rlif", "weight": 2.0}]}))
    assert isinstance(total, WeightedSum) and [w for w, _ in total.parts] == [0.5, 2.0]
    scaled = make_reward_source(RewardConfig(source="env", weight=3.0))
    assert isinstance(scaled, WeightedSum) and scaled.parts[0][0] == 3.0
    with pytest.raises(ConfigError, match="needs term: NAME"):
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "reward": {"source": "term"}})
    with pytest.raises(ConfigError, match="neither one of env, rlif, term, sum.* nor an import path"):
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "reward": "no_such_source"})
    with pytest.raises(HilrlError, match="cannot be imported"):
        make_reward_source(RewardConfig(source="no_such_module:make"))


def test_a_sum_adds_its_parts_and_its_version_moves_with_theirs():
    rng = np.random.default_rng(0)
    replay = Replay.create(OBS, ACT, 100)
    storage = TransitionStorage(replay, copy_interventions=False)
    storage.extend(steps(6, rng, intervened=[0, 0, 1, 1, 0, 0]), np.array([True, 0, 0, 0, 0, 0], bool))
    part = Counting()
    replay.set_reward_source(WeightedSum([(0.5, EnvReward()), (2.0, RLIFReward()), (1.0, part)]))
    env = np.arange(6, dtype=np.float32)
    rlif = np.array([0, -1, 0, 0, 0, 0], np.float32)
    np.testing.assert_allclose(replay.online.gather(np.arange(6))["rewards"], 0.5 * env + 2 * rlif + env)
    part.version = 1
    np.testing.assert_allclose(replay.online.gather(np.arange(6))["rewards"], 0.5 * env + 2 * rlif + env + 10)


def test_buffers_cache_rewards_recompute_in_bulk_and_refresh_rows_marked_later():
    rng = np.random.default_rng(0)
    replay = Replay.create(OBS, ACT, 50_000)
    source = Counting()
    replay.set_reward_source(source)
    storage = TransitionStorage(replay, copy_interventions=False)
    storage.extend(steps(20_000, rng), np.r_[True, np.zeros(19_999, bool)])
    replay.online.gather(np.arange(5))
    assert source.calls == [8192, 8192, 3616], "the first batch computes every stored row, a chunk per call"
    source.calls.clear()
    batch = replay.online.gather(np.array([3, 4, 3]))
    assert source.calls == [] and (batch["rewards"] == np.array([3, 4, 3])).all(), "cached"
    np.testing.assert_array_equal(batch["env_rewards"], [3, 4, 3])
    storage.extend(steps(2, rng, intervened=[1, 0]), np.zeros(2, bool))  # step 20 000 was intervened: marks 19 999
    batch = replay.online.gather(np.array([19_999, 20_000, 20_001]))
    assert source.calls == [3], "only the new rows and the row marked since are computed"
    source.version = 1
    replay.online.gather(np.array([0]))
    assert source.calls[1:] == [8192, 8192, 3618]
    replay.set_reward_source(RLIFReward())  # -1 on the step before the takeover, 0 elsewhere
    np.testing.assert_array_equal(replay.online.gather(np.array([19_998, 19_999, 20_000]))["rewards"], [0, -1, 0])


def test_a_source_giving_the_wrong_number_or_nan_is_named_and_nothing_stored_changes():
    buffer = ReplayBuffer(OBS, ACT, 10)
    buffer.add({"state": np.zeros(2)}, np.zeros(2), 1.5, {"state": np.zeros(2)}, False, False)

    class Broken:
        version = 0

        def __init__(self, out):
            self.out = out

        def __call__(self, batch):
            return self.out

    buffer.reward_source = Broken(np.zeros(3))
    with pytest.raises(HilrlError, match="returned 3 rewards for 1 rows"):
        buffer.gather(np.array([0]))
    buffer.reward_source = Broken(np.array([np.nan]))
    with pytest.raises(HilrlError, match="NaN or inf"):
        buffer.gather(np.array([0]))
    assert buffer.rewards[0] == 1.5
    with pytest.raises(HilrlError, match="int 'version'"):
        buffer.reward_source = lambda batch: batch.env_rewards


def test_a_run_trains_on_a_named_reward_term(tmp_path):
    """Reach's one term is the distance to the goal: as a reward source it gives what the env's dense reward gives."""
    from hilrl.runtime.train import train

    config = validate_config({
        "env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 1},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "reward": {"source": "term", "term": "distance", "weight": -1.0},
        "train": {"steps": 60, "learning_starts": 30, "eval_episodes": 1, "video": False},
    })
    train(config, tmp_path / "run", show_progress=False)
    (path,) = (tmp_path / "run" / "checkpoints").glob("replay_online_*.npz")
    with np.load(path) as f:
        np.testing.assert_allclose(f["rewards"], f["env_rewards"], atol=1e-6)  # Reach: reward = -distance
        np.testing.assert_allclose(f["rewards"], -f["reward_terms::distance"], atol=1e-6)
