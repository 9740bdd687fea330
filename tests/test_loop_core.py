"""The loop core as a user extends it: a new algorithm in one file, a reward source that changes while training,
a person on a keyboard taking over during `hilrl train`, and the run folder's checks."""

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hilrl.config import ConfigError, validate_config
from hilrl.errors import HilrlError
from hilrl.feedback.teleop import TeleopCommand
from hilrl.feedback.teleop.keyboard import KeyboardDevice
from hilrl.policies.registry import register_algorithm
from hilrl.runtime.train import train

ROOT = Path(__file__).parents[1]
REACH_SAC = {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]}


def stored(run, name):
    (path,) = (run / "checkpoints").glob(f"replay_{name}_*.npz")
    with np.load(path) as f:
        return {k.replace("::", "/"): f[k] for k in f.files}


# ---------------------------------------------------------------- a toy algorithm, added here and nowhere else
@dataclass
class ToyConfig:
    """The toy's settings: the keys allowed under ``algo:``."""

    batch_size: int = 16
    bump_at: int = 0  # the update at which it bumps the reward source's version (0: never)


UPDATES: list[dict] = []  # what each update of the last Toy saw


@register_algorithm("test.toy", ToyConfig)
class Toy:
    """Acts at random; each update samples the online buffer and records the rewards it was given."""

    def __init__(self, observation_space, action_space, config, seed=0):
        self.config, self.space, self.rng = config, action_space, np.random.default_rng(seed)
        self.updates = 0
        UPDATES.clear()

    def act(self, obs, deterministic=False):
        return self.rng.uniform(-1, 1, self.space.shape).astype(np.float32)

    def update(self, replay):
        self.updates += 1
        if self.updates == self.config.bump_at:
            replay.online.reward_source.version += 1  # e.g. a preference model refitted
            UPDATES.append({"bumped_at_size": len(replay.online)})
        slots = self.rng.integers(0, len(replay.online), self.config.batch_size)
        batch = replay.online.gather(slots)
        UPDATES.append({"slots": slots, "rewards": batch["rewards"], "step": batch["step"],
                        "version": replay.online.reward_source.version})
        return {"loss": 0.0}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.updates = state["updates"]

    def policy_weights(self):
        return {}

    def load_policy_weights(self, weights):
        pass


def test_an_algorithm_registered_in_one_file_validates_trains_and_evaluates(tmp_path):
    from hilrl.runtime.run import evaluate_run

    with pytest.raises(ConfigError, match=r"unknown key 'algo.batch_sise' \(did you mean 'batch_size'\?\); "
                                          r"allowed here: batch_size, bump_at, name"):
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "test.toy", "batch_sise": 3}})
    config = validate_config({"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 1},
                              "algo": {"name": "test.toy", "batch_size": 8},
                              "train": {"steps": 120, "learning_starts": 20, "eval_episodes": 2, "video": False}})
    result = train(config, tmp_path / "run", show_progress=False)
    assert len(UPDATES) == 120 - 20 + 1 and all(len(u["rewards"]) == 8 for u in UPDATES)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["algo"] == "test.toy" and metrics["updates"] == 101 and result.episodes == 2
    assert evaluate_run(tmp_path / "run", episodes=1, show_progress=False).episodes == 1  # rebuilt from the registry


# ---------------------------------------------------------------- door 2: a reward source whose version moves
SOURCE = '''
import numpy as np


class StepReward:
    """reward = scale * version + the row's step index: a reward that changes when its version does."""

    def __init__(self, scale):
        self.scale, self.version, self.calls = scale, 0, []

    def __call__(self, batch):
        self.calls.append((self.version, len(batch)))
        return (self.scale * self.version + batch.step).astype(np.float32)

    def __repr__(self):
        return f"StepReward(calls={self.calls})"
'''


def test_a_reward_source_whose_version_moves_is_used_for_old_and_new_rows(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = validate_config({
        "env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0},
        "algo": {"name": "test.toy", "batch_size": 64, "bump_at": 60},
        "reward": {"source": "my_rewards:StepReward", "kwargs": {"scale": 1000}},
        "train": {"steps": 200, "learning_starts": 40, "eval_episodes": 1, "video": False},
    })
    train(config, tmp_path / "run", show_progress=False)
    bump = next(i for i, u in enumerate(UPDATES) if "bumped_at_size" in u)
    old_rows = UPDATES[bump]["bumped_at_size"]
    before, after = UPDATES[:bump], UPDATES[bump + 1:]
    for update in before:
        np.testing.assert_array_equal(update["rewards"], update["step"])  # version 0
    sampled_old = 0
    for update in after:
        np.testing.assert_array_equal(update["rewards"], 1000 + update["step"])  # version 1, every row
        sampled_old += int((update["slots"] < old_rows).sum())
    assert sampled_old > 100, "rows stored before the bump were sampled after it"
    # the old rows were recomputed in bulk (one call for all of them), not row by row
    calls = json.loads((tmp_path / "run" / "metrics.json").read_text())["reward"]
    assert f"(1, {old_rows})" in calls
    # what the env gave is kept beside what the learner trained on
    online = stored(tmp_path / "run", "online")
    assert (online["rewards"] == 1000 + online["extras/step"]).all()
    assert np.all(online["env_rewards"] <= 0) and online["env_rewards"].min() < -0.05  # Reach's -distance


# ---------------------------------------------------------------- door 1: a person on a keyboard during training
class ScriptedKeyboard(KeyboardDevice):
    """A keyboard whose key events come from a script: read number -> events, as a person would type."""

    def __init__(self, script):
        super().__init__(listen=False)
        self.script, self.reads = script, 0

    def read(self) -> TeleopCommand:
        for kind, key in self.script.get(self.reads, []):
            (self.press if kind == "down" else self.release)(key)
        self.reads += 1
        return super().read()


@pytest.mark.parametrize("learn_from", ["hil_serl", "rlif"])
def test_keyboard_events_take_over_during_train_on_reach(tmp_path, learn_from):
    import h5py

    # the device is read once per step: forward for steps 20-29; the intervene key held (the arm holds still)
    # for 50-54, the first steps of the second episode (Reach episodes are 50 steps); left for 60-62
    keyboard = ScriptedKeyboard({20: [("down", "w")], 30: [("up", "w")], 50: [("down", "space")],
                                 55: [("up", "space")], 60: [("down", "a")], 63: [("up", "a")]})
    config = validate_config({
        "env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 1}, "algo": REACH_SAC,
        "intervention": {"source": "device", "device": "keyboard", "learn_from": learn_from},
        "train": {"steps": 70, "learning_starts": 40, "eval_episodes": 1, "video": False},
    })
    train(config, tmp_path / "run", show_progress=False, device=keyboard)
    online, demo = stored(tmp_path / "run", "online"), stored(tmp_path / "run", "demo")
    with h5py.File(tmp_path / "run" / "demos.hdf5", "r") as f:
        recorded = int(f["data"].attrs["total"])
    intervened = online["extras/intervened"]
    assert np.flatnonzero(intervened).tolist() == [*range(20, 30), *range(50, 55), 60, 61, 62]
    executed, proposed = online["actions"], online["extras/policy_action"]
    np.testing.assert_allclose(executed[20:30, :3], np.tile([1.0, 0.0, 0.0], (10, 1)))  # 'w': forward (+x)
    np.testing.assert_allclose(executed[50:55, :3], 0.0)  # held still
    np.testing.assert_allclose(executed[60:63, :3], np.tile([0.0, 1.0, 0.0], (3, 1)))  # 'a': left (+y)
    np.testing.assert_allclose(executed[20:30, 3], proposed[20:30, 3])  # the gripper stays the policy's
    assert not np.allclose(executed[20:30], proposed[20:30]) and np.array_equal(executed[:20], proposed[:20])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["interventions"], metrics["intervened_steps"]) == (3, 18)
    if learn_from == "hil_serl":  # HIL-SERL: the person's steps also go to the demo buffer, env reward kept
        assert len(demo["actions"]) == recorded + 18
        np.testing.assert_array_equal(demo["actions"][recorded:], executed[intervened])
        np.testing.assert_array_equal(demo["rewards"][recorded:], online["rewards"][intervened])
    else:  # RLIF: -1 on the policy's step just before each takeover (none before an episode's first step)
        assert np.flatnonzero(online["rewards"] == -1).tolist() == [19, 59]
        assert set(np.unique(online["rewards"])) == {0.0, -1.0} and len(demo["actions"]) == recorded


def test_a_keyboard_without_a_display_is_named_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("PYNPUT_BACKEND", raising=False)
    import importlib.util

    if importlib.util.find_spec("pynput") is None:
        pytest.skip("pynput is not installed (the missing-package error is the one to see then)")
    config = validate_config({"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0}, "algo": REACH_SAC,
                              "intervention": {"source": "device", "device": "keyboard"},
                              "train": {"steps": 10, "video": False}})
    with pytest.raises(HilrlError, match="needs an X display"):
        train(config, tmp_path / "run", show_progress=False)
    with pytest.raises(ConfigError, match="intervention.source 'device' needs intervention.device"):
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "intervention": {"source": "device"},
                         "algo": REACH_SAC})


# ---------------------------------------------------------------- the run folder refuses mismatched demos
def test_demos_recorded_with_other_settings_are_refused_naming_them(tmp_path):
    from hilrl.config import EnvConfig
    from hilrl.runtime.record import record_demos

    run = tmp_path / "run"
    record_demos(EnvConfig(id="hilrl/Reach-v0"), run / "demos.hdf5", 3, show_progress=False)
    config = validate_config({"env": {"id": "hilrl/Reach-v0", "reward_type": "sparse"}, "demos": {"episodes": 10},
                              "algo": REACH_SAC, "train": {"steps": 10, "video": False}})
    with pytest.raises(HilrlError, match=r"env.reward_type: file 'dense', config 'sparse'; demos.episodes: file 3, "
                                         r"config 10.*delete .*demos.hdf5"):
        train(config, run, show_progress=False)
    named = validate_config({"env": {"id": "hilrl/Reach-v0", "reward_type": "sparse"},
                             "demos": {"path": str(run / "demos.hdf5")}, "algo": REACH_SAC,
                             "train": {"steps": 10, "video": False}})
    with pytest.raises(HilrlError, match=r"env.reward_type: file 'dense', config 'sparse'.*demos.path"):
        train(named, tmp_path / "other", show_progress=False)


# ---------------------------------------------------------------- cross-section rules live in the config
@pytest.mark.parametrize("sections, message", [
    ({"runtime": "distributed", "algo": {"name": "bc"}}, "runtime.mode: distributed trains algo.name sac, not 'bc'"),
    ({"algo": {"name": "hg_dagger"}}, "intervention.source: algo 'hg_dagger' learns from interventions"),
    ({"algo": {"name": "bc"}, "intervention": {"source": "random"}}, "algo 'bc' trains offline on the demos"),
    ({"algo": REACH_SAC, "reward": "rlif"}, "reward: rlif learns from interventions"),
    ({"algo": {"name": "sb3.sac"}, "reward": {"source": "term", "term": "distance"}},
     "reward source 'term' is not supported with algo 'sb3.sac'"),
    ({"algo": {"name": "dagger"}, "demos": {"episodes": 0}}, "demos: algo 'dagger' starts from behaviour cloning"),
    ({"algo": {**REACH_SAC, "device": "tpu"}}, "device must be auto, cpu, cuda or cuda:N"),
])
def test_rules_across_sections_name_the_file_and_fields(tmp_path, sections, message):
    raw = {"env": {"id": "hilrl/Reach-v0"}, **sections}
    with pytest.raises(ConfigError, match=rf"^exp.yaml: .*{message}"):
        validate_config(raw, source="exp.yaml")


def test_the_algorithm_device_is_read_from_yaml():
    import torch

    from hilrl.envs.make import make_env
    from hilrl.policies.registry import make_algorithm

    env = make_env(validate_config({"env": {"id": "hilrl/Reach-v0"}}).env)
    auto = make_algorithm(validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": REACH_SAC}).algo,
                          env.observation_space, env.action_space)
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: device: cuda is valid here")
    cuda = validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {**REACH_SAC, "device": "cuda"}}).algo
    with pytest.raises(HilrlError, match="torch sees no CUDA device here; use device: auto"):
        make_algorithm(cuda, env.observation_space, env.action_space)
    env.close()


# ---------------------------------------------------------------- what imports what
def test_recording_and_listing_tasks_never_import_torch(tmp_path):
    for args in (["envs"], ["record", str(ROOT / "sim_configs/push.yaml"), "--episodes", "1", "--out",
                            str(tmp_path / "d.hdf5")]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "hilrl.cli", *args], capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "import time:" in line}
        assert "hilrl.envs.arm_env" in imported and "torch" not in imported, args  # tasks made, no torch


def test_a_person_can_be_named_in_every_shipped_place(tmp_path):
    """The README's device option validates wherever a config can name interventions."""
    text = textwrap.dedent("""
        env: {id: hilrl/Reach-v0}
        algo: {name: sac}
        intervention: {source: device, device: gamepad, learn_from: rlif, dead_zone: 0.1}
    """)
    (tmp_path / "exp.yaml").write_text(text)
    from hilrl.config import load_config

    config = load_config(tmp_path / "exp.yaml")
    assert config.reward_config.source == "rlif" and config.intervention.dead_zone == 0.1


def test_a_person_beside_the_actor_takes_over_and_the_learner_stores_it(tmp_path):
    """`hilrl actor` with a device: the same step source, so the learner's buffer holds the person's steps."""
    import time

    from hilrl.runtime.distributed.actor import Actor
    from hilrl.runtime.distributed.learner import Learner

    config = validate_config({
        "env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0}, "algo": REACH_SAC,
        "intervention": {"source": "device", "device": "keyboard", "learn_from": "hil_serl"},
        "train": {"steps": 30, "learning_starts": 1000, "video": False},
        "runtime": {"mode": "distributed", "max_unacked": 1000},
    })
    keyboard = ScriptedKeyboard({10: [("down", "d")], 15: [("up", "d")]})
    learner = Learner(config, tmp_path / "run", bind="tcp://127.0.0.1:*", show_progress=False)
    actor = Actor(config, tmp_path / "arm", learner.address, actor_id="arm", device=keyboard)
    try:
        deadline = time.monotonic() + 60
        while learner.acked.get("arm", 0) < 30:
            assert time.monotonic() < deadline, f"acked {learner.acked}"
            if actor.counters["env_steps"] < 30:
                actor.act()
            actor._service_link()
            learner._serve(5)
        online, demo = learner.online.gather(np.arange(30)), learner.demo
        assert np.flatnonzero(online["intervened"]).tolist() == list(range(10, 15))
        np.testing.assert_allclose(online["actions"][10:15, :3], np.tile([0.0, -1.0, 0.0], (5, 1)))  # 'd': right
        assert len(demo) == 5 and learner.counters["intervened_steps"] == 5  # HIL-SERL's copies
        distributed = learner.checkpoint()
    finally:
        actor.close()
        learner.close()
    # one checkpoint layout whichever loop wrote it: the learner's reads like the local loop's
    import torch

    from hilrl.runtime.run import load_policy

    local = train(validate_config({"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0}, "algo": REACH_SAC,
                                   "train": {"steps": 20, "learning_starts": 10, "eval_episodes": 1, "video": False}}),
                  tmp_path / "local", show_progress=False)
    layouts = [torch.load(path, weights_only=False) for path in (distributed, Path(local.checkpoint))]
    for path, state in zip((distributed, Path(local.checkpoint)), layouts):
        assert {"algo", "experiment", "state", "counters", "replay"} <= set(state) and state["algo"] == "sac"
        assert all((path.parent / name).is_file() for name in state["replay"].values())
    assert set(layouts[0]["state"]) == set(layouts[1]["state"])  # the algorithm's own state, the same keys
    assert set(layouts[0]["counters"]) >= set(layouts[1]["counters"])
    assert load_policy(distributed)[1].algo_name == "sac"


def test_the_code_cites_papers_and_repositories_not_files_outside_the_repo():
    cited = [f"{path.relative_to(ROOT)}:{n}" for folder in ("hilrl", "hardware", "benchmarks", "sim_configs")
             for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".yaml", ".md")
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if "ALGORITHMS.md" in line or "DESIGN.md" in line]
    assert not cited, cited
    assert "../shared" not in (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "ARCHITECTURE.md").is_file()


def test_steps_are_paced_in_real_time_while_a_person_can_take_over():
    """A person needs the arm at control_hz; the simulator alone would run many times faster."""
    import time

    from hilrl.envs.wrappers import RealTime
    from hilrl.runtime.seeds import Seeds
    from hilrl.runtime.steps import make_training_env

    config = validate_config({"env": {"id": "hilrl/Reach-v0", "control_hz": 50}, "algo": REACH_SAC,
                              "intervention": {"source": "device", "device": "keyboard"}})
    env = make_training_env(config, Seeds(0), device=KeyboardDevice(listen=False))
    assert isinstance(env, RealTime)
    env.reset(seed=0)
    started = time.monotonic()
    for _ in range(10):
        env.step(np.zeros(4, np.float32))
    assert time.monotonic() - started >= 9 / 50  # never faster than 50 Hz (a lower bound: sleeps only add)
    env.close()
