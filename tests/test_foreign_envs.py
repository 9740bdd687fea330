"""A user brings a gymnasium env hilrl did not define: configure it with YAML only, record with their own scripted
policy, replay, train, evaluate, and be told plainly what is wrong (hilrl.envs.adapter)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import yaml

from hilrl.config import ConfigError, validate_config
from hilrl.errors import HilrlError
from hilrl.envs.make import make_env

ROOT = Path(__file__).parents[1]

POLICY = textwrap.dedent("""
    import numpy as np

    class Balance:
        def reset(self):
            pass

        def __call__(self, obs):
            state = obs["state"]
            return np.clip([%s], -1.0, 1.0).astype(np.float32)

    def make(env, noise=0.0, seed=None):
        return Balance()
""")


def hilrl(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "hilrl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def write(folder: Path, name: str, experiment: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(experiment))
    return path


def test_a_mujoco_env_of_gymnasium_records_with_my_policy_and_replays_by_states_exactly(tmp_path):
    (tmp_path / "my_policy.py").write_text(POLICY % "2.0 * state[1] + 0.3 * state[3] + 0.1 * state[0]")
    config = write(tmp_path, "pendulum.yaml", {"env": {"id": "InvertedPendulum-v5", "max_episode_steps": 40},
                                               "demos": {"episodes": 0}, "algo": {"name": "sac"}})
    rec = hilrl("record", config, "--expert", "my_policy:make", "--episodes", 2, "--out", "d.hdf5", cwd=tmp_path)
    assert rec.returncode == 0, rec.stderr
    assert "recorded 2 episodes" in rec.stdout and "mean length 40.0 steps" in rec.stdout, rec.stdout
    rep = hilrl("replay", "d.hdf5", "--mode", "states", cwd=tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "states replay" in rep.stdout and "0 of 2 demos diverged beyond 1e-05" in rep.stdout, rep.stdout


def test_sac_trains_on_pendulum_with_my_policy_intervening_evaluates_and_replays_its_actions(tmp_path):
    (tmp_path / "my_policy.py").write_text(POLICY % "-(3.0 * state[1] + state[2])")
    config = write(tmp_path, "pendulum.yaml", {
        "env": {"id": "Pendulum-v1", "kwargs": {"g": 9.81}, "max_episode_steps": 50, "expert": "my_policy:make"},
        "demos": {"episodes": 2},
        "intervention": {"source": "random", "probability": 0.3},  # a simulated person driving my policy
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32},
        "train": {"steps": 200, "learning_starts": 100, "eval_episodes": 2, "video": False}})
    train = hilrl("train", config, "--out", "run", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["env"] == "Pendulum-v1" and metrics["env_steps"] == 200
    assert metrics["interventions"] > 0 and metrics["intervention_source"] == "random"
    with h5py.File(tmp_path / "run/demos.hdf5", "r") as f:  # the demos came from my policy
        assert len(f["data"]) == 2
    ev = hilrl("eval", "run", "--episodes", 2, "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1])["episodes"] == 2
    rep = hilrl("replay", "run/demos.hdf5", cwd=tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "no simulator state to restore" in rep.stdout and "0 of 2 demos diverged" in rep.stdout, rep.stdout


@pytest.mark.parametrize("algo", [
    {"name": "bc", "hidden": [32, 32], "batch_size": 32},
    {"name": "dagger", "hidden": [32, 32], "batch_size": 32, "round_steps": 50, "updates_per_round": 20},
    {"name": "sb3.sac", "policy_kwargs": {"net_arch": [32, 32]}, "batch_size": 32},
], ids=lambda algo: algo["name"])
def test_bc_dagger_and_sb3_train_on_a_foreign_env_from_my_policy_and_the_run_evaluates(tmp_path, algo):
    (tmp_path / "my_policy.py").write_text(POLICY % "-(3.0 * state[1] + state[2])")
    config = write(tmp_path, "pendulum.yaml", {
        "env": {"id": "Pendulum-v1", "max_episode_steps": 30, "expert": "my_policy:make"},
        "demos": {"episodes": 2}, "algo": algo,
        "train": {"steps": 100, "learning_starts": 50, "eval_episodes": 2, "video": False}})
    train = hilrl("train", config, "--out", "run", cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["env"] == "Pendulum-v1" and metrics["algo"] == algo["name"], metrics
    ev = hilrl("eval", "run", "--episodes", 2, "--json", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout.strip().splitlines()[-1])["episodes"] == 2


def test_a_hilrl_only_key_on_a_foreign_env_stops_hilrl_train_with_one_line_naming_env_kwargs(tmp_path):
    config = write(tmp_path, "bad.yaml", {"env": {"id": "Pendulum-v1", "cameras": ["front"]},
                                          "demos": {"episodes": 0}, "algo": {"name": "sac"}})
    result = hilrl("train", config, "--out", "run", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("env.cameras: keyword(s) of hilrl's own tasks, not of 'Pendulum-v1'; give Pendulum-v1's own keywords "
            "under env.kwargs") in result.stderr.replace("\n", ""), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("env, message", [
    ({"id": "no_such_pkg/PandaPickCube-v0"}, r"unknown env id 'no_such_pkg/PandaPickCube-v0'.*namespaces installed: "
                                             r".*hilrl.*name it in env.package"),
    ({"id": "Pendulm-v1"}, r"did you mean 'Pendulum-v1'"),
    ({"id": "Pendulum-v1", "package": "no_such_pkg_xyz"}, r"env.package 'no_such_pkg_xyz' cannot be imported"),
    ({"id": "hilrl/Reach-v0", "kwargs": {"g": 1}}, r"env.kwargs: for foreign envs.*'hilrl/Reach-v0' is a hilrl task"),
    ({"id": "Pendulum-v1", "action_map": {"xyz": [0, 1, 1]}}, r"each action dimension once"),
])
def test_a_foreign_env_config_mistake_names_the_fix(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"env": env, "demos": {"episodes": 0}, "algo": {"name": "sac"}})


def test_what_needs_a_scripted_policy_or_an_action_map_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"demos: 5 demos would be recorded by the scripted expert, and "
                                          r"'Pendulum-v1' has none; set env.expert"):
        validate_config({"env": {"id": "Pendulum-v1"}, "demos": {"episodes": 5}, "algo": {"name": "sac"}})
    with pytest.raises(ConfigError, match=r"intervention.source 'distance': a simulated person drives the scripted "
                                          r"expert, and 'Pendulum-v1' has none"):
        validate_config({"env": {"id": "Pendulum-v1"}, "demos": {"episodes": 0}, "algo": {"name": "sac"},
                         "intervention": {"source": "distance"}})
    with pytest.raises(ConfigError, match=r"algo 'dagger' asks the scripted expert for labels"):
        validate_config({"env": {"id": "Pendulum-v1"}, "demos": {"path": "d.hdf5"}, "algo": {"name": "dagger"}})
    with pytest.raises(ConfigError, match=r"a person's device drives 'Pendulum-v1' through env.action_map"):
        validate_config({"env": {"id": "Pendulum-v1"}, "demos": {"episodes": 0}, "algo": {"name": "sac"},
                         "intervention": {"source": "device", "device": "keyboard"}})


class NestedEnv(gym.Env):
    """A lab's env: nested Dict observation with a channels-first camera, an action Box of [0, 2], success in info."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Dict({"front": gym.spaces.Box(0, 255, (3, 8, 6), np.uint8)}),
            "joints": gym.spaces.Box(-1.0, 1.0, (2, 2), np.float64)})
        self.action_space = gym.spaces.Box(0.0, 2.0, (2,), np.float32)
        self.last = None

    def _obs(self):
        image = np.arange(3 * 8 * 6, dtype=np.uint8).reshape(3, 8, 6)
        return {"pixels": {"front": image}, "joints": np.full((2, 2), 0.5)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(), {}

    def step(self, action):
        self.last = np.asarray(action)
        return self._obs(), 1.0, False, True, {"succeed": bool(action[0] > 1.5)}


def test_the_adapter_flattens_nested_dicts_converts_chw_images_rescales_actions_and_reads_success():
    gym.register("lab/Nested-v0", entry_point=NestedEnv)
    try:
        env = make_env(validate_config({"env": {"id": "lab/Nested-v0"}, "demos": {"episodes": 0},
                                        "algo": {"name": "sac"}}).env)
        assert sorted(env.observation_space.spaces) == ["joints", "pixels/front"]
        assert env.observation_space["pixels/front"].shape == (8, 6, 3)
        assert env.observation_space["joints"].shape == (4,) and env.observation_space["joints"].dtype == np.float32
        obs, info = env.reset(seed=0)
        image = np.arange(3 * 8 * 6, dtype=np.uint8).reshape(3, 8, 6)
        np.testing.assert_array_equal(obs["pixels/front"], image.transpose(1, 2, 0))
        assert info["is_success"] is False
        obs, reward, terminated, truncated, info = env.step(np.array([1.0, -1.0]))
        np.testing.assert_allclose(env.unwrapped.foreign.last, [2.0, 0.0])  # [-1, 1] -> the env's [0, 2]
        assert info["is_success"] is True and (terminated, truncated) == (False, True)
        assert not hasattr(env.unwrapped, "get_state"), "a non-MuJoCo env records no states"
    finally:
        gym.registry.pop("lab/Nested-v0")


class GripperFirstEnv(gym.Env):
    """A lab arm whose action is [grasp (+1 closes), spare, dx, dy, dz]; truncates after 3 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (5,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 0.0, False, self.t >= 3, {}


def test_a_persons_device_drives_the_dimensions_env_action_map_names(tmp_path):
    from hilrl.data.hdf5 import DemoFile
    from hilrl.feedback.teleop import TeleopCommand, TeleopDevice
    from hilrl.runtime.record import record_demos

    class Pedal(TeleopDevice):  # a person pushing forward with the gripper closed
        name = "pedal"

        def read(self):
            return TeleopCommand(delta=np.array([0.5, 0.0, -0.25, 0, 0, 0]), gripper=-1.0)

    gym.register("lab/GripperFirst-v0", entry_point=GripperFirstEnv)
    try:
        env = validate_config({"env": {"id": "lab/GripperFirst-v0", "action_map": {
            "xyz": [2, 3, 4], "gripper": 0, "gripper_sign": -1}}, "demos": {"episodes": 0},
            "algo": {"name": "sac"}}).env
        record_demos(env, tmp_path / "d.hdf5", 1, device=Pedal(), show_progress=False, realtime=False)
        with DemoFile(tmp_path / "d.hdf5") as demos:
            actions = demos.episode(demos.demo_names[0]).actions
        # hilrl's closed gripper (-1) is this env's +1; xyz land on dims 2, 3, 4; the spare dim stays 0
        np.testing.assert_allclose(actions, [[1.0, 0.0, 0.5, 0.0, -0.25]] * 3)
        without = validate_config({"env": {"id": "lab/GripperFirst-v0"}, "demos": {"episodes": 0},
                                   "algo": {"name": "sac"}}).env
        with pytest.raises(HilrlError, match="a person drives 'lab/GripperFirst-v0' through env.action_map"):
            record_demos(without, tmp_path / "e.hdf5", 1, device=Pedal(), show_progress=False, realtime=False)
    finally:
        gym.registry.pop("lab/GripperFirst-v0")


@pytest.mark.slow
def test_a_reward_search_on_a_foreign_env_builds_its_candidates_from_my_base_env_section_and_retrains(tmp_path):
    pytest.importorskip("openai", reason="reward search talks to its LLM with the openai SDK: pip install 'hilrl[llm]'")
    from hilrl.llm.scripted_server import ScriptedServer

    upright = ("```python\nimport numpy as np\n\ndef compute_reward(obs, action, next_obs):\n"
               "    cos = next_obs['state'][:, 0]\n    return cos, {'upright': cos}\n```")
    base = write(tmp_path, "base.yaml", {
        "env": {"id": "Pendulum-v1", "kwargs": {"g": 5.0}, "max_episode_steps": 30},
        "demos": {"episodes": 0}, "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32},
        "train": {"learning_starts": 20, "eval_episodes": 1, "video": False}})
    with ScriptedServer([[upright]]) as server:
        llm = write(tmp_path, "llm.yaml", {"provider": "openai", "base_url": server.base_url, "model": "scripted-gpt",
                                           "backoff_s": 0.01, "retries": 1})
        search = hilrl("reward-search", "eureka", "--task", "Pendulum-v1", "--llm", llm, "--base", base,
                       "--samples", 1, "--iterations", 1, "--steps", 40, "--final-seeds", 1, "--workers", 1,
                       "--out", "search", cwd=tmp_path)
    assert search.returncode == 0, search.stdout + search.stderr
    candidate = yaml.safe_load(next((tmp_path / "search/iter_0").rglob("config.yaml")).read_text())
    assert candidate["env"]["kwargs"] == {"g": 5.0} and candidate["env"]["max_episode_steps"] == 30
    assert "the env's own reward" in search.stdout and "no human-normalised score" in search.stdout, search.stdout
