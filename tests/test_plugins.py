"""One way to extend every door (hilrl.plugins): a new interventionist, teleop device or reward source is one
file, found through a config's ``plugins:`` list or an installed package's ``hilrl.plugins`` entry point, and
run by the user's own entry point, ``hilrl train``."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from hilrl.config import ConfigError, validate_config
from hilrl.errors import HilrlError
from hilrl.plugins import PluginError, Registry, import_object

ROOT = Path(__file__).parents[1]
_SCRIPT = Path(sys.executable).parent / "hilrl"
HILRL = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "hilrl.cli"]
TINY = {"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 16, "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": 40, "learning_starts": 20, "eval_episodes": 1, "video": False}}

# ---------------------------------------------------------------- three parts, one file each, as a user writes them
TOY_GATE = '''
"""Takes over at every n-th step with a fixed action: an interventionist with its own settings."""
from dataclasses import dataclass

import numpy as np

from hilrl.feedback.interventions import register_interventionist


@dataclass
class EverySettings:
    every: int = 3


@register_interventionist("toy_every", config_cls=EverySettings)
class EveryNth:
    def __init__(self, every):
        self.every, self.calls = every, 0

    @classmethod
    def from_config(cls, config, context):
        return cls(config.settings.every)

    def reset(self):
        pass

    def __call__(self, obs, policy_action):
        self.calls += 1
        return np.array([0.0, 0.0, 0.5, -1.0], np.float32) if self.calls % self.every == 0 else None
'''

TOY_REWARD = '''
"""reward = offset + the row's step index within its episode."""
import numpy as np

from hilrl.feedback.rewards import register_reward_source


@register_reward_source("toy_step")
class StepReward:
    version = 0

    def __init__(self, offset):
        self.offset = offset

    @classmethod
    def from_config(cls, config, context):
        return cls(float(config.kwargs.get("offset", 0.0)))

    def __call__(self, batch):
        return (self.offset + batch.step).astype(np.float32)
'''

TOY_DEVICE = '''
"""A pedal that pushes the arm up on its reads 5-9: a teleop device."""
import numpy as np

from hilrl.feedback.teleop import TeleopCommand, TeleopDevice, register_device


@register_device("toy_pedal")
class Pedal(TeleopDevice):
    def __init__(self):
        self.reads = 0

    def read(self):
        self.reads += 1
        up = 5 <= self.reads - 1 < 10
        return TeleopCommand(np.array([0, 0, 1.0 if up else 0.0, 0, 0, 0], np.float32))
'''


def hilrl_train(config: dict, cwd: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """``hilrl train`` in a subprocess, as a user runs it (no display: a person's device opens no viewer)."""
    (cwd / "exp.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYTHONPATH")}
    env["MUJOCO_GL"] = "egl"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([*HILRL, "train", "exp.yaml", "--out", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def stored(run: Path) -> dict:
    (path,) = (run / "checkpoints").glob("replay_online_*.npz")
    with np.load(path) as f:
        return {k.replace("::", "/"): f[k] for k in f.files}


def test_an_interventionist_and_a_reward_source_of_ones_own_files_run_through_hilrl_train(tmp_path):
    (tmp_path / "toy_gate.py").write_text(TOY_GATE)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "toy_reward.py").write_text(TOY_REWARD)
    config = {**TINY, "plugins": ["toy_gate.py", "toy_reward"],  # a file by path, a module on PYTHONPATH
              "intervention": {"source": "toy_every", "kwargs": {"every": 4}},
              "reward": {"source": "toy_step", "kwargs": {"offset": 1000}}}
    result = hilrl_train(config, tmp_path, pythonpath=tmp_path / "lib")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stored(tmp_path / "run")
    intervened = rows["extras/intervened"].astype(bool)
    assert np.flatnonzero(intervened).tolist() == list(range(3, 40, 4))  # the gate's 4th, 8th, ... call
    np.testing.assert_allclose(rows["actions"][intervened], np.tile([0.0, 0.0, 0.5, -1.0], (10, 1)))
    np.testing.assert_allclose(rows["rewards"], 1000 + rows["extras/step"])  # the toy's reward, not the env's
    assert not np.allclose(rows["env_rewards"], rows["rewards"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["intervened_steps"] == 10
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["plugins"] == ["toy_gate.py", "toy_reward"]  # the run's record names what it imported


def test_a_teleop_device_of_ones_own_file_takes_over_in_hilrl_train(tmp_path):
    (tmp_path / "toy_pedal.py").write_text(TOY_DEVICE)
    config = {**TINY, "plugins": ["toy_pedal.py"], "train": {**TINY["train"], "steps": 20, "learning_starts": 10},
              "intervention": {"source": "device", "device": "toy_pedal", "learn_from": "hil_serl"}}
    result = hilrl_train(config, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stored(tmp_path / "run")
    assert np.flatnonzero(rows["extras/intervened"]).tolist() == [5, 6, 7, 8, 9]
    np.testing.assert_allclose(rows["actions"][5:10, :3], np.tile([0.0, 0.0, 1.0], (5, 1)))  # up, as pressed


def _install(site: Path, dist: str, module: str, code: str) -> None:
    """A distribution as pip leaves it: its package and a ``.dist-info`` with the ``hilrl.plugins`` entry point."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(code)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hilrl.plugins]\n{module} = {module}\n")


def test_an_installed_plugin_package_is_found_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    _install(site, "hilrl-toy-rewards", "hilrl_toy_rewards", TOY_REWARD)
    config = {**TINY, "reward": {"source": "toy_step", "kwargs": {"offset": -7}}}  # no plugins: list
    result = hilrl_train(config, tmp_path, pythonpath=site)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = stored(tmp_path / "run")
    np.testing.assert_allclose(rows["rewards"], -7 + rows["extras/step"])

    # a plugin that fails to import is one line naming it and its distribution, before anything runs
    _install(site, "hilrl-broken", "hilrl_broken", "raise RuntimeError('no licence server')\n")
    result = hilrl_train(config, tmp_path / "site", pythonpath=site)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "hilrl_broken" in result.stderr and "hilrl-broken" in result.stderr
    assert "no licence server" in result.stderr and not (tmp_path / "site" / "run").exists()


def test_an_unknown_name_is_one_line_listing_the_registered_ones(tmp_path):
    (tmp_path / "toy_gate.py").write_text(TOY_GATE)
    result = hilrl_train({**TINY, "plugins": ["toy_gate.py"], "intervention": {"source": "toy_evry"}}, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "unknown intervention source 'toy_evry' (did you mean 'toy_every'?); allowed: none, value, distance, " \
           "random, person, device, toy_every" in " ".join(result.stderr.split())
    with pytest.raises(ConfigError, match=r"unknown teleop device 'pedal'.*allowed: keyboard, gamepad, spacemouse"):
        validate_config({**TINY, "intervention": {"source": "device", "device": "pedal"}})
    with pytest.raises(ConfigError, match=r"intervention.kwargs: source 'random' takes no settings"):
        validate_config({**TINY, "intervention": {"source": "random", "kwargs": {"every": 2}}})


def test_the_registry_lists_suggests_and_loads_by_path_on_first_use():
    registry = Registry("widget")
    registry.register("json_dumps", "json:dumps", colour="red")

    @registry.register("square", colour="blue")
    def square(x):
        return x * x

    assert registry.names() == ["json_dumps", "square"] and registry.names(colour="blue") == ["square"]
    assert registry.entry("json_dumps").lazy and registry.get("json_dumps") is json.dumps
    assert registry.get("square") is square
    with pytest.raises(HilrlError, match=r"unknown widget 'sqare' \(did you mean 'square'\?\); allowed: json_dumps, "
                                         r"square"):
        registry.get("sqare")
    registry.register("missing", "no_such_module_xyz:thing")
    with pytest.raises(HilrlError, match="widget 'missing' 'no_such_module_xyz:thing' cannot be imported"):
        registry.get("missing")
    with pytest.raises(PluginError, match="no import path"):
        import_object("json.dumps", "thing")


def test_validating_a_config_with_every_kind_of_part_imports_no_torch():
    code = textwrap.dedent("""
        import sys
        from hilrl.config import validate_config
        validate_config({"env": {"id": "hilrl/Push-v0", "relative_positions": True}, "algo": {"name": "sac"},
                         "intervention": {"source": "value", "q_ref": "nowhere", "learn_from": "rlif"},
                         "reward": {"source": "sum", "parts": [{"source": "rlif"}, {"source": "preferences"}]}})
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "sac"},
                         "intervention": {"source": "device", "device": "spacemouse"}})
        assert "torch" not in sys.modules, "torch imported"
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_packaged_pick_cube_reference_recipe_is_the_shipped_experiment():
    """runtime/reference.py keeps sim_configs/pick_cube_rlpd.yaml's experiment as data (an installed package has
    no sim_configs/); both must validate to the same experiment, apart from what the reference run sets itself."""
    from hilrl.runtime.reference import reference_experiment

    steps, seed = 12345, 3
    shipped = yaml.safe_load((ROOT / "sim_configs" / "pick_cube_rlpd.yaml").read_text())
    shipped["train"].update(steps=steps, seed=seed, checkpoint_every=steps, video=False)
    ours = reference_experiment("PickCube", steps, seed)
    assert validate_config(ours).model_dump(mode="json") == validate_config(shipped).model_dump(mode="json")
