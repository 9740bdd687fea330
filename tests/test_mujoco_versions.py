"""The mujoco range hilrl declares is the one it is tested on: `make test` runs the env and task tests in the
main venv (mujoco 4.0.x) and again in the second venv (.venv-mujoco3: mujoco 3.8.1, beside gym-hil)."""

import tomllib
from pathlib import Path

import gymnasium as gym
import mujoco
import numpy as np
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parents[1]


def declared(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == name)


def test_the_running_mujoco_is_inside_the_declared_range_whose_ends_the_makefile_installs():
    pin = declared("mujoco")
    assert Version(mujoco.__version__) in pin.specifier, (mujoco.__version__, str(pin))
    makefile = (ROOT / "Makefile").read_text()
    lower = next(line.split("?=")[1].strip() for line in makefile.splitlines() if line.startswith("MUJOCO3"))
    assert Version(lower) in pin.specifier  # the second venv's version is one the range allows


def test_an_episode_renders_and_steps_the_same_way_under_this_mujoco():
    """The task reads only what both 3.8 and 4.x provide: a rendered frame (EGL under `make test`) and a seeded
    expert episode that picks the cube."""
    import hilrl  # noqa: F401  (registers the ids)
    from hilrl.feedback.experts import make_expert

    env = gym.make("hilrl/PickCube-v0", render_mode="rgb_array")
    expert = make_expert(env)
    obs, _ = env.reset(seed=1)
    frame = env.render()
    assert frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 1.0  # a picture, not a blank
    expert.reset()
    for _ in range(100):
        obs, _, terminated, truncated, info = env.step(expert(obs))
        if terminated or truncated:
            break
    assert info["is_success"], mujoco.__version__
    env.close()
