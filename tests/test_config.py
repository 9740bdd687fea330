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
    import importlib.util
    from pathlib import Path

    import yaml

    from hilrl.llm.droc.config import load_correction_config

    configs = sorted(Path(__file__).parents[1].joinpath("sim_configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"reach.yaml", "push.yaml", "pick_cube.yaml", "peg_insert.yaml"}
    for path in configs:
        if path.name.startswith("gym_hil") and importlib.util.find_spec("gym_hil") is None:
            continue  # gym-hil needs mujoco<3.9: tests/test_gym_hil.py validates these in the second venv
        # a correction session (`hilrl correct`) names a task variant; every other file is an experiment
        (load_correction_config if "task" in yaml.safe_load(path.read_text()) else load_config)(path)


def test_a_correction_session_config_given_to_train_points_to_hilrl_correct():
    from pathlib import Path

    with pytest.raises(ConfigError, match="run it with `hilrl correct`"):
        load_config(Path(__file__).parents[1] / "sim_configs" / "correct_pick_tall.yaml")


def test_overrides_read_values_as_yaml_and_name_themselves_in_errors(tmp_path):
    """`--set KEY=VALUE` (hilrl.cli): dotted keys, YAML values, validated with the file, errors naming the flag."""
    from hilrl.config import Override, parse_override

    values = {text: parse_override(text).value for text in
              ("train.steps=500", "algo.hidden=[64, 64]", "train.video=false", "demos.path=null", "algo.lr=1e-3",
               "env.id='1e-3'", "env.id=hilrl/Reach-v0")}
    assert list(values.values()) == [500, [64, 64], False, None, 1e-3, "1e-3", "hilrl/Reach-v0"]
    for bad, needle in (("train.steps", "expected KEY=VALUE"), ("train..steps=1", "not a dotted key"),
                        ("train.steps=[1", "not valid YAML")):
        with pytest.raises(ConfigError, match=needle):
            parse_override(bad)

    path = write(tmp_path, GOOD + "reward: env\n")
    cfg = load_config(path, [parse_override("reward.weight=0.5"), parse_override("runtime.actors=2"),
                             Override("train.seed", 4, "--seed 4")])
    assert (cfg.reward.source, cfg.reward.weight, cfg.runtime.actors, cfg.train.seed) == ("env", 0.5, 2, 4)

    def message(overrides, text=GOOD):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text), overrides)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert message([Override("train.steps", -5, "--steps -5")]).startswith("--steps -5: field 'train.steps'")
    assert message([parse_override("algo.bacth_size=4")]).startswith(
        "--set algo.bacth_size=4: unknown key 'algo.bacth_size' (did you mean 'batch_size'?)")
    assert message([parse_override("train.steps.x=1")]).startswith("--set train.steps.x=1: 'train.steps' is 10")
    assert message([parse_override("demos.episodes=0")]).startswith("--set demos.episodes=0: demos: algo 'bc'")
    assert message([parse_override("train.seed=1"), parse_override("train.seed=2")]) == (
        "--set train.seed=1 and --set train.seed=2 both set train.seed; give it once")
    # the file's own mistake still names the file, next to the flag's
    both = message([parse_override("train.log_every=0")], GOOD.replace("steps: 10", "stpes: 10"))
    assert "exp.yaml: unknown key 'train.stpes'" in both and "--set train.log_every=0: field 'train.log_every'" in both
