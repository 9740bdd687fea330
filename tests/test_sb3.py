"""SB3 adapters: executed actions in SB3's buffer, HIL-SERL demo copies, mixed batches, truncation, `hilrl train`."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from hilrl.config import ConfigError, validate_config
from hilrl.data.episode import EpisodeBuilder
from hilrl.errors import HilrlError
from hilrl.feedback.interventions import InterventionWrapper, RandomInterventionist
from hilrl.policies.registry import make_algorithm
from hilrl.policies.sb3 import DemoMixedFlatReplayBuffer, DemoMixedReplayBuffer, SB3Agent
from hilrl.runtime.strategies.sb3_loop import make_training_env
from hilrl.runtime.train import train

ROOT = Path(__file__).parents[1]
HILRL = [sys.executable, "-m", "hilrl.cli"]
KEYS = ["ee_pos", "object"]


def experiment(**sections):
    raw = {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 0},
        "algo": {"name": "sb3.sac", "net_arch": [32, 32], "batch_size": 32, "obs_keys": KEYS},
        "train": {"steps": 200, "learning_starts": 50, "eval_episodes": 2, "checkpoint_every": 200, "video": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return validate_config(raw)


class InfoLog(BaseCallback):
    """Keeps every step's info, in the order SB3 stored the transitions."""

    def __init__(self):
        super().__init__()
        self.infos = []

    def _on_step(self) -> bool:
        self.infos.extend(self.locals["infos"])
        return True


def learn(config, steps, demo_episodes=(), copy_interventions=False):
    probe = gym.make(config.env.id)
    agent = make_algorithm(config.algo, probe.observation_space, probe.action_space, seed=config.train.seed)
    probe.close()
    env = make_training_env(config, agent)
    agent.start_training(env, 10_000, config.train.learning_starts, list(demo_episodes),
                         copy_interventions=copy_interventions)
    log = InfoLog()
    agent.model.learn(steps, callback=log)
    env.close()
    return agent, log.infos


def test_intervened_steps_store_the_executed_action_not_the_policys():
    config = experiment(intervention={"source": "random", "probability": 0.3, "duration": 2})
    agent, infos = learn(config, 150)
    stored = agent.replay_buffer.actions[:150, 0]
    executed = np.stack([i["executed_action"] for i in infos])
    proposed = np.stack([i["policy_action"] for i in infos])
    intervened = np.array([i["intervened"] for i in infos])
    assert 20 < intervened.sum() < 130
    np.testing.assert_allclose(stored, executed, atol=1e-6)  # Reach's action space is [-1, 1]: no rescaling
    differs = np.abs(stored - proposed).max(axis=1) > 1e-4
    assert differs[intervened].all() and not differs[~intervened].any()
    assert agent.replay_buffer.demo.size() == 0, "without HIL-SERL copying the demo part stays empty"


class _PointEnv(gym.Env):
    """A Dict-observation env with actions in [-2, 2], to check SB3's [-1, 1] buffer rescaling."""

    observation_space = gym.spaces.Dict({"pos": gym.spaces.Box(-10, 10, (2,), np.float32)})
    action_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2, np.float32)
        return {"pos": self.pos.copy()}, {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action, np.float32), -10, 10)
        return {"pos": self.pos.copy()}, -float(np.abs(self.pos - 1).sum()), False, False, {}


def test_executed_action_is_rescaled_to_sb3s_buffer_range():
    config = experiment().algo
    agent = SB3Agent(_PointEnv.observation_space, _PointEnv.action_space,
                     type(config)(name="sb3.td3", obs_keys=("pos",), net_arch=(16,)), seed=0)
    # the wrapper clips overrides to [-1, 1] (our arms' range); 0.8 is an executed action of 0.8 in env units
    env = DummyVecEnv([lambda: Monitor(InterventionWrapper(_PointEnv(), RandomInterventionist(
        lambda obs: np.array([0.8, -0.8], np.float32), probability=1.0, seed=0)))])
    agent.start_training(env, 1000, learning_starts=10)
    agent.model.learn(30)
    np.testing.assert_allclose(agent.replay_buffer.actions[:30, 0], np.tile([0.4, -0.4], (30, 1)), atol=1e-6)


def test_hil_serl_copies_intervention_steps_into_the_demo_part():
    config = experiment(intervention={"source": "random", "probability": 0.25})
    recorded = [_recorded_episode(config, seed=s) for s in range(2)]
    agent, infos = learn(config, 150, demo_episodes=recorded, copy_interventions=True)
    buffer = agent.replay_buffer
    intervened = np.array([i["intervened"] for i in infos])
    n_recorded = sum(len(ep) for ep in recorded)
    assert intervened.sum() > 15
    assert buffer.demo.size() == n_recorded + intervened.sum()
    copies = slice(n_recorded, buffer.demo.size())
    np.testing.assert_array_equal(buffer.demo.actions[copies, 0], buffer.actions[:150, 0][intervened])
    np.testing.assert_array_equal(buffer.demo.rewards[copies, 0], buffer.rewards[:150, 0][intervened])
    for key in KEYS:
        np.testing.assert_array_equal(buffer.demo.observations[key][copies, 0],
                                      buffer.observations[key][:150, 0][intervened])
    # the recorded demos sit first, with their own actions
    np.testing.assert_allclose(buffer.demo.actions[:len(recorded[0]), 0], recorded[0].actions, atol=1e-6)


def _recorded_episode(config, seed, max_steps=None):
    from hilrl.feedback.experts import make_expert

    env = gym.make(config.env.id, **({"max_episode_steps": max_steps} if max_steps else {}))
    expert = make_expert(env, seed=seed)
    obs, _ = env.reset(seed=seed)
    builder = EpisodeBuilder(obs)
    while True:
        action = expert(obs)
        obs, reward, terminated, truncated, _ = env.step(action)
        builder.add(action, reward, obs, terminated, truncated)
        if terminated or truncated:
            env.close()
            return builder.build()


@pytest.mark.parametrize("flat", [False, True], ids=["dict", "flat"])
def test_mixed_batches_draw_demo_fraction_from_demos(flat):
    box = gym.spaces.Box(-1, 1, (1,), np.float32)
    space, cls = (box, DemoMixedFlatReplayBuffer) if flat else (gym.spaces.Dict({"x": box}), DemoMixedReplayBuffer)
    buffer = cls(100, space, box, device="cpu", demo_fraction=0.25)
    one = np.ones((1, 1), np.float32)

    def fill(target, value, n):
        obs = value * one if flat else {"x": value * one}
        for _ in range(n):
            target.add(obs, obs, value * one, np.array([value]), np.array([False]), [{}])

    fill(buffer.demo, -1.0, 10)
    assert (buffer.sample(16).rewards == -1).all(), "all demo while nothing online is stored"
    fill(buffer, 1.0, 30)
    for batch_size in (8, 64, 256):
        batch = buffer.sample(batch_size)
        from_demo = (batch.rewards == -1).squeeze(1)
        assert from_demo.sum() == round(batch_size * 0.25)
        observations = batch.observations if flat else batch.observations["x"]
        assert (observations.squeeze(1) == batch.rewards.squeeze(1)).all(), "rows stay intact"
    buffer.demo.reset()
    assert (buffer.sample(32).rewards == 1).all(), "all online without demos"


def test_truncated_steps_bootstrap_and_terminated_ones_do_not():
    # the expert acts at every step: Reach succeeds (terminated) in some episodes, others hit the 12-step limit
    config = experiment(env={"max_episode_steps": 12}, intervention={"source": "random", "probability": 1.0,
                                                                      "expert_noise": 0.6})
    agent, infos = learn(config, 240)
    buffer = agent.replay_buffer
    dones, timeouts = buffer.dones[:240, 0], buffer.timeouts[:240, 0]
    truncated = np.array([i["TimeLimit.truncated"] for i in infos])
    terminated = dones.astype(bool) & ~truncated
    assert truncated.sum() >= 3 and terminated.sum() >= 3
    np.testing.assert_array_equal(timeouts.astype(bool), truncated)
    effective_done = dones * (1 - timeouts)  # what SB3's sample() hands the critic target
    assert (effective_done[truncated] == 0).all() and (effective_done[terminated] == 1).all()
    # a truncated step's next observation is the real last one, not the next episode's reset
    for t in np.flatnonzero(truncated):
        terminal = infos[t]["terminal_observation"]
        np.testing.assert_array_equal(buffer.next_observations["ee_pos"][t, 0], terminal["ee_pos"])
        assert not np.array_equal(buffer.next_observations["object"][t, 0], buffer.observations["object"][t + 1, 0])
    batch = buffer.sample(256)
    assert batch.dones.sum() > 0
    sampled_done_obs = batch.next_observations["ee_pos"][batch.dones.squeeze(1) == 1]
    terminal_obs = buffer.next_observations["ee_pos"][:240, 0][terminated]
    for row in sampled_done_obs.numpy():
        assert np.isclose(terminal_obs, row).all(axis=1).any()


def test_demo_episodes_keep_terminated_and_truncated_apart():
    config = experiment()
    truncated_ep = _recorded_episode(config, seed=3, max_steps=2)  # the expert needs 3-4 steps
    finished_ep = _recorded_episode(config, seed=4)
    assert truncated_ep.truncated[-1] and not truncated_ep.terminated[-1] and finished_ep.terminated[-1]
    probe = gym.make(config.env.id)
    agent = SB3Agent(probe.observation_space, probe.action_space, config.algo)
    agent.start_training(make_training_env(config, agent), 1000, 10, [truncated_ep, finished_ep])
    demo = agent.replay_buffer.demo
    effective = demo.dones[:demo.size(), 0] * (1 - demo.timeouts[:demo.size(), 0])
    expected = np.r_[np.zeros(len(truncated_ep)), finished_ep.terminated.astype(float)]
    np.testing.assert_array_equal(effective, expected)


def test_bad_sb3_settings_are_refused_with_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="policy_delay is not a keyword of SAC"):
        experiment(algo={"policy_delay": 2})
    with pytest.raises(ConfigError, match="did you mean 'policy_delay'.*allowed here: action_noise"):
        experiment(algo={"name": "sb3.td3", "polcy_delay": 2})
    with pytest.raises(HilrlError, match="'rlif' is not supported"):  # refused by the config now
        train(experiment(intervention={"source": "random", "learn_from": "rlif"}), tmp_path, show_progress=False)
    assert not (tmp_path / "demos.hdf5").exists(), "refused before recording demos"
    probe = gym.make("hilrl/Reach-v0")
    with pytest.raises(HilrlError, match="images"):
        SB3Agent(gym.make("hilrl/Reach-v0", cameras=("front",), image_size=32).observation_space,
                 probe.action_space, experiment(algo={"obs_keys": ["ee_pos", "front"]}).algo)
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)  # as if sb3-contrib were not installed
    with pytest.raises(ConfigError, match="pip install sb3-contrib"):
        experiment(algo={"name": "sb3.tqc"})


@pytest.mark.parametrize("name", ["sb3.td3", "sb3.tqc", "sb3.crossq"])
def test_other_algorithms_train_and_round_trip_their_weights(name):
    if name != "sb3.td3":
        pytest.importorskip("sb3_contrib")
    config = experiment(algo={"name": name, "batch_size": 16}, train={"learning_starts": 20})
    agent, _ = learn(config, 40)
    assert agent.model._n_updates > 0
    probe = gym.make(config.env.id)
    obs, _ = probe.reset(seed=5)
    fresh = make_algorithm(config.algo, probe.observation_space, probe.action_space, seed=99)
    assert not np.allclose(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    fresh.load_state_dict(agent.state_dict())
    np.testing.assert_allclose(fresh.act(obs, deterministic=True), agent.act(obs, deterministic=True), atol=1e-6)


def test_hilrl_train_then_eval_on_reach(tmp_path):
    config = tmp_path / "exp.yaml"
    raw = yaml.safe_load((ROOT / "sim_configs" / "reach_sb3_sac.yaml").read_text())
    raw["demos"]["episodes"] = 2
    raw["algo"].update(net_arch=[32, 32], batch_size=32)
    raw["intervention"] = {"source": "random", "probability": 0.1}
    raw["train"].update(steps=300, learning_starts=100, eval_episodes=3, checkpoint_every=150, video=False)
    config.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    trained = subprocess.run([*HILRL, "train", str(config), "--out", str(run)], capture_output=True, text=True,
                             cwd=ROOT, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_150.pt", "step_300.pt"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["algo"] == "sb3.sac" and metrics["env_steps"] == 300 and metrics["updates"] > 0
    assert metrics["demo_transitions"] >= metrics["intervened_steps"] > 0
    evaluated = subprocess.run([*HILRL, "eval", str(run), "--json", "--episodes", "3"], capture_output=True,
                               text=True, cwd=ROOT, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert result["checkpoint"].endswith("step_300.pt") and result["episodes"] == 3
    # same seeds, same deterministic policy: the reloaded checkpoint reproduces the run's own evaluation
    assert result["mean_return"] == pytest.approx(metrics["mean_return"], abs=1e-4)

    again = subprocess.run([*HILRL, "train", str(config), "--out", str(run)], capture_output=True, text=True,
                           cwd=ROOT, timeout=600)
    assert again.returncode != 0 and "new --out" in again.stderr
