"""Experiment YAML validation: every mistake names the file, the field and what is allowed."""

import pytest

from hilrl.config import ConfigError, load_config

GOOD = """
env:
  id: hilrl/Reach-v0
algo:
  name: bc
train:
  steps: 10
"""


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_fill_in(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.env.cameras == [] and cfg.env.control_hz == 10
    assert cfg.algo.hidden == (256, 256) and cfg.demos.episodes == 50
    assert cfg.env.make_kwargs()["cameras"] == ()


def test_overrides_use_dotted_keys(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {"train.steps": 7, "train.seed": 3})
    assert (cfg.train.steps, cfg.train.seed) == (7, 3)


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("steps: 10", "stpes: 10"), ["exp.yaml", "unknown key 'train.stpes'", "did you mean 'steps'"]),
        (GOOD.replace("Reach", "Raech"), ["exp.yaml", "field 'env.id'", "allowed: hilrl/PegInsert-v0"]),
        (GOOD + "  video: maybe\n", ["field 'train.video'", "valid boolean"]),
        (GOOD.replace("name: bc", "name: ppo"), ["algo", "'bc'", "'sac'"]),
        (GOOD.replace("name: bc", "name: sac\n  num_critic: 10"), ["unknown key 'algo.num_critic'", "did you mean 'num_critics'"]),
        ("env:\n  cameras: [front, side]\n  id: hilrl/Reach-v0\n", ["field 'env.cameras.1'", "'front' or 'wrist'", "'side'"]),
        ("algo: {name: bc}\n", ["missing required key 'env'"]),
        ("env: [unclosed\n", ["not valid YAML", "line"]),
        ("- a\n- b\n", ["expected a mapping"]),
    ],
)
def test_mistakes_name_file_field_and_fix(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_validate():
    from pathlib import Path

    import yaml

    from hilrl.llm.droc.config import load_correction_config

    configs = sorted(Path(__file__).parents[1].joinpath("sim_configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"reach.yaml", "push.yaml", "pick_cube.yaml", "peg_insert.yaml"}
    for path in configs:
        # a correction session (`hilrl correct`) names a task variant; every other file is an experiment
        (load_correction_config if "task" in yaml.safe_load(path.read_text()) else load_config)(path)


def test_a_correction_session_config_given_to_train_points_to_hilrl_correct():
    from pathlib import Path

    with pytest.raises(ConfigError, match="run it with `hilrl correct`"):
        load_config(Path(__file__).parents[1] / "sim_configs" / "correct_pick_tall.yaml")
