"""Behaviour of the MuJoCo arm tasks: API conformance, determinism, exact replay, time limits."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

import hilrl.envs
from hilrl.envs import ENV_IDS, TASKS
from hilrl.feedback import make_expert

torch.set_num_threads(1)
TASK_NAMES = list(TASKS)
OBJECT_DIMS = {"Reach": 3, "Push": 10, "PickCube": 10, "PegInsert": 10}


def _rollout(env, seed: int, n: int, action_seed: int = 0):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    out = [obs]
    for _ in range(n):
        obs, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        out.append(obs)
    return out


def _assert_obs_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_gymnasium_and_sb3_checkers_pass_in_state_mode(task):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make(ENV_IDS[task]).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # advisory warnings (e.g. unbounded boxes) are fine
        gym_check(env, skip_render_check=False)
        sb3_check(env, warn=False)
    obs, _ = env.reset(seed=0)
    expected = {"ee_pos": 3, "ee_quat": 4, "gripper": 1, "joint_pos": 7, "joint_vel": 7, "object": OBJECT_DIMS[task]}
    assert {k: v.shape[0] for k, v in obs.items()} == expected
    assert all(v.dtype == np.float32 for v in obs.values())
    assert env.task_name == task and env.action_scale > 0
    env.close()


def test_checkers_pass_with_cameras():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gym.make(ENV_IDS["PickCube"], cameras=("front", "wrist"), image_size=64).unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check(env)
        sb3_check(env, warn=False)
    obs, _ = env.reset(seed=1)
    for cam in ("front", "wrist"):
        assert obs[cam].shape == (64, 64, 3) and obs[cam].dtype == np.uint8
        assert obs[cam].std() > 5, f"{cam} image is blank"
    assert env.render().shape == (256, 256, 3)
    env.close()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_same_seed_gives_identical_episodes_and_different_seeds_differ(task):
    env_a, env_b = gym.make(ENV_IDS[task]), gym.make(ENV_IDS[task])
    for obs_a, obs_b in zip(_rollout(env_a, seed=7, n=15), _rollout(env_b, seed=7, n=15)):
        _assert_obs_equal(obs_a, obs_b)
    other, _ = env_b.reset(seed=8)
    first, _ = env_a.reset(seed=7)
    assert not np.array_equal(first["object"], other["object"])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_set_state_reproduces_obs_and_future_exactly(task):
    cameras = ("front", "wrist") if task == "PickCube" else ()
    env = gym.make(ENV_IDS[task], cameras=cameras, image_size=48).unwrapped
    expert = make_expert(env)
    obs, _ = env.reset(seed=3)
    for _ in range(6):  # mid-task: objects touched, gripper moving
        obs, *_ = env.step(expert(obs))
    state, recorded = env.get_state(), obs
    assert state.dtype == np.float64
    actions = [expert(obs)]
    future = []
    for _ in range(5):
        obs, reward, term, trunc, info = env.step(actions[-1])
        future.append((obs, reward, term, trunc, info))
        actions.append(expert(obs))
    env.reset(seed=99)  # somewhere else entirely
    env.set_state(state)
    _assert_obs_equal(env.get_obs(), recorded)
    for action, (obs, reward, term, trunc, info) in zip(actions, future):
        replay = env.step(action)
        _assert_obs_equal(replay[0], obs)
        assert replay[1:] == (reward, term, trunc, info)
    env.close()


def test_observations_are_fresh_arrays_each_step():
    env = gym.make(ENV_IDS["Push"]).unwrapped
    first, _ = env.reset(seed=0)
    kept = {k: v.copy() for k, v in first.items()}
    for _ in range(3):
        env.step(np.array([1, 0, -1, -1], np.float32))
    _assert_obs_equal(first, kept)  # later steps never write into arrays handed out earlier


def test_set_state_rejects_bad_states():
    env = gym.make(ENV_IDS["Reach"]).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="state has shape"):
        env.set_state(np.zeros(3))
    bad = env.get_state()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        env.set_state(bad)


def test_truncated_at_time_limit_without_terminated():
    env = TASKS["Reach"](max_episode_steps=3)  # the task's own limit, without any gymnasium wrapper
    env.reset(seed=0)
    flags = [env.step(np.zeros(4, np.float32))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_terminated_on_success_not_truncated_and_configurable():
    for terminate in (True, False):
        env = gym.make(ENV_IDS["Reach"], terminate_on_success=terminate, reward_type="sparse")
        expert = make_expert(env)
        obs, _ = env.reset(seed=0)
        for _ in range(30):
            obs, reward, terminated, truncated, info = env.step(expert(obs))
            assert reward == float(info["is_success"])
            if info["is_success"]:
                break
        assert info["is_success"] and not truncated
        assert terminated is terminate


@pytest.mark.parametrize("task", ["Reach", "PickCube"])
def test_dense_cost_is_the_dense_reward_minus_its_maximum(task):
    # The same seeded expert episode under both reward types: every step differs by the task's maximum,
    # so a staged positive reward (PickCube, max 4 on success) becomes a cost and success pays most.
    rewards = {}
    for reward_type in ("dense", "dense_cost"):
        env = gym.make(ENV_IDS[task], reward_type=reward_type)
        expert = make_expert(env)
        obs, _ = env.reset(seed=3)
        rewards[reward_type] = []
        for _ in range(60):
            obs, reward, terminated, truncated, info = env.step(expert(obs))
            rewards[reward_type].append(reward)
            if terminated or truncated:
                break
        assert info["is_success"] and terminated
    shift = env.unwrapped.dense_reward_max
    assert shift == {"Reach": 0.0, "PickCube": 4.0}[task]
    np.testing.assert_allclose(np.array(rewards["dense_cost"]), np.array(rewards["dense"]) - shift)
    assert max(rewards["dense_cost"]) <= 0.0
    assert rewards["dense"][-1] == max(rewards["dense"])  # the success step pays the most


def test_time_limit_survives_set_state():
    env = TASKS["Reach"](max_episode_steps=4)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros(4, np.float32))
    state = env.get_state()
    env.reset(seed=1)
    env.set_state(state)
    assert env.elapsed_steps == 3
    assert env.step(np.zeros(4, np.float32))[3] is True


def test_actions_are_clipped_and_tcp_stays_in_workspace():
    env = gym.make(ENV_IDS["Reach"]).unwrapped
    low, high = env.workspace
    for direction in ([1, 1, 1], [-1, -1, -1]):
        env.reset(seed=0)
        for _ in range(25):
            obs, *_ = env.step(np.array([*(3 * np.array(direction)), 1.0], np.float32))  # out of range on purpose
        # The target is clipped to the box; the servo may lag a few millimetres but never overshoots far.
        assert np.all(obs["ee_pos"] <= high + 0.01) and np.all(obs["ee_pos"] >= low - 0.01)
        corner = high if direction[0] > 0 else low
        assert np.linalg.norm(obs["ee_pos"] - corner) < 0.01  # every corner is reachable


def test_gripper_command_opens_and_closes():
    env = gym.make(ENV_IDS["Reach"]).unwrapped
    obs, _ = env.reset(seed=0)
    assert obs["gripper"][0] > 0.95
    for _ in range(3):
        obs, *_ = env.step(np.array([0, 0, 0, -1], np.float32))
    assert obs["gripper"][0] < 0.05


def test_rotation_actions_turn_the_gripper():
    env = gym.make(ENV_IDS["Reach"], use_rotation=True).unwrapped
    assert env.action_space.shape == (7,)
    obs, _ = env.reset(seed=0)
    start = obs["ee_quat"].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 1, 1], np.float32))
    angle = 2 * np.arccos(min(1.0, abs(float(np.dot(start, obs["ee_quat"])))))
    assert 0.3 < angle < 0.8  # three yaw steps of 0.2 rad, tracked by the servo


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cameras": ("top",)}, "unknown camera"),
        ({"reward_type": "shaped"}, "reward_type"),
        ({"control_hz": 7.0}, "whole number"),
        ({"image_size": 0}, "image_size"),
        ({"max_episode_steps": -1}, "max_episode_steps"),
        ({"render_mode": "video"}, "render_mode"),
    ],
)
def test_bad_constructor_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TASKS["Reach"](**kwargs)


def test_bad_actions_raise_clear_errors():
    env = gym.make(ENV_IDS["Reach"]).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="expected"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0, 0]))


def test_import_and_render_without_display():
    code = (
        "import warnings, numpy as np, gymnasium as gym, hilrl.envs\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    env = gym.make('hilrl/Reach-v0', render_mode='human')\n"
        "assert any('DISPLAY' in str(x.message) for x in w)\n"
        "env.reset(seed=0)\n"
        "assert env.render().shape == (256, 256, 3)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.parametrize("limit", [3, 50, 80])  # below, at and above Reach's default of 50
def test_gym_make_max_episode_steps_reaches_the_task(limit):
    env = gym.make(ENV_IDS["Reach"], max_episode_steps=limit, terminate_on_success=False)
    assert env.unwrapped.max_episode_steps == limit
    env.reset(seed=0)
    truncated = [env.step(np.zeros(4, np.float32))[3] for _ in range(limit)]
    assert truncated == [False] * (limit - 1) + [True]
    assert env.unwrapped.elapsed_steps == limit, "the task itself truncated there, not only gymnasium's TimeLimit"
    again = gym.make(env.spec)  # recreating from the spec keeps the limit
    assert again.unwrapped.max_episode_steps == limit
    for made in (env, again):
        made.close()
    plain = gym.make(ENV_IDS["Reach"])
    assert plain.unwrapped.max_episode_steps == TASKS["Reach"].default_max_episode_steps == 50
    assert not any(isinstance(w, gym.wrappers.TimeLimit) for w in _wrappers(plain)), "no TimeLimit unless asked for"
    plain.close()


def _wrappers(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def test_make_env_passes_max_episode_steps_to_the_task():
    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env

    env = make_env(EnvConfig(id=ENV_IDS["PickCube"], max_episode_steps=130))
    assert env.unwrapped.max_episode_steps == 130 and env.spec.max_episode_steps == 130
    env.close()


def test_import_hilrl_registers_the_ids_without_loading_mujoco_or_torch():
    code = (
        "import sys, hilrl\n"
        "assert 'mujoco' not in sys.modules and 'torch' not in sys.modules, 'import hilrl must stay cheap'\n"
        "import gymnasium as gym\n"
        "ids = ['hilrl/Reach-v0', 'hilrl/Push-v0', 'hilrl/PickCube-v0', 'hilrl/PegInsert-v0']\n"
        "assert all(i in gym.registry for i in ids)\n"
        "env = gym.make('hilrl/Reach-v0')\n"
        "import os\n"
        "assert os.environ['MUJOCO_GL'] == 'egl' and 'mujoco' in sys.modules\n"
        "import hilrl.envs\n"  # registers again: idempotent
        "assert all(i in gym.registry for i in ids)\n"
        "print('ok', env.unwrapped.task_name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok Reach" in result.stdout, result.stderr


def _documented_dense(task: str, t: dict) -> float:
    """Each task's docstring formula for its dense reward, from its named terms."""
    if task == "Reach":
        return -t["distance"]
    if task == "Push":
        return -(t["reach_distance"] + 2.0 * t["goal_distance"])
    if task == "PickCube":
        return 4.0 if t["success"] else t["reach"] + t["grasped"] + t["grasped"] * t["place"]
    return t["reach"] + t["grasped"] + t["grasped"] * (t["align"] + t["align"] * t["insert"])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_reward_terms_make_up_the_dense_reward(task):
    cls = TASKS[task]
    assert cls.reward_terms and len(set(cls.reward_terms)) == len(cls.reward_terms)
    assert all(name in cls.__doc__ for name in cls.reward_terms), "each term is documented"
    episodes = {}
    for reward_type in ("dense", "sparse", "dense_cost"):
        env = gym.make(ENV_IDS[task], reward_type=reward_type)
        expert = make_expert(env)
        obs, info = env.reset(seed=4)
        steps = [(None, info)]
        for _ in range(100):
            obs, reward, terminated, truncated, info = env.step(expert(obs))
            steps.append((reward, info))
            if terminated or truncated:
                break
        assert info["is_success"], "the expert episode reaches every stage of the reward"
        episodes[reward_type] = steps
        env.close()
    for (dense, info), (sparse, _), (cost, _) in zip(episodes["dense"], episodes["sparse"], episodes["dense_cost"]):
        terms = info["reward_terms"]
        assert tuple(terms) == cls.reward_terms and all(type(v) is float for v in terms.values())
        if dense is not None:
            assert dense == pytest.approx(_documented_dense(task, terms), rel=1e-12, abs=1e-12)
            assert cost == pytest.approx(dense - cls.dense_reward_max, abs=1e-12)
            assert sparse == float(info["is_success"])
    # The terms are the dense reward's factors whatever reward_type is, and each step's dict is its own.
    assert [i["reward_terms"] for _, i in episodes["dense"]] == [i["reward_terms"] for _, i in episodes["sparse"]]
    assert len({id(i["reward_terms"]) for _, i in episodes["dense"]}) == len(episodes["dense"])


def test_env_ids_are_registered():
    assert hilrl.envs.ENV_IDS == {t: f"hilrl/{t}-v0" for t in ("Reach", "Push", "PickCube", "PegInsert")}
    for env_id in ENV_IDS.values():
        assert env_id in gym.registry


@pytest.mark.parametrize("task", TASK_NAMES)
def test_relative_positions_adds_tcp_to_object_and_object_to_goal(task):
    from gymnasium.utils.env_checker import check_env as gym_check

    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env

    env = make_env(EnvConfig(id=ENV_IDS[task], relative_positions=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check(env, skip_render_check=True)
    for obs in _rollout(env, seed=3, n=5):
        assert env.observation_space.contains(obs)
        np.testing.assert_allclose(obs["tcp_to_object"], obs["object"][:3] - obs["ee_pos"], atol=1e-6)
        if OBJECT_DIMS[task] == 10:
            np.testing.assert_allclose(obs["object_to_goal"], obs["object"][7:10] - obs["object"][:3], atol=1e-6)
        else:
            assert "object_to_goal" not in obs
    env.close()
    plain = make_env(EnvConfig(id=ENV_IDS[task]))
    assert "tcp_to_object" not in plain.observation_space.spaces
    plain.close()


def _hover_then_lift(env_id: str, gripper: float, seed: int, grasp_z: float = 0.0) -> tuple[float, float]:
    """Hold the tool centre on the object with a fixed gripper command for 40 steps, then rise for 20:
    (grasp reward earned while hovering, how far the object rose)."""
    env = gym.make(env_id)
    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    start_z, grasp_reward = float(obs["object"][2]), 0.0
    for _ in range(40):
        to_object = obs["object"][:3] + (0.0, 0.0, grasp_z) - obs["ee_pos"]
        action = np.append(np.clip(to_object / base.action_scale, -1, 1), gripper).astype(np.float32)
        obs, _, _, _, info = env.step(action)
        grasp_reward += info["reward_terms"]["grasped"]
    for _ in range(20):
        obs, *_ = env.step(np.array([0, 0, 1, gripper], np.float32))
    env.close()
    return grasp_reward, float(obs["object"][2]) - start_z


@pytest.mark.parametrize("env_id, grasp_z", [("hilrl/PickCube-v0", 0.0), ("hilrl/PegInsert-v0", 0.015)])
@pytest.mark.parametrize("gripper", [0.3, 0.5, 1.0])
def test_an_open_gripper_hovering_on_the_object_earns_no_grasp_reward(env_id, grasp_z, gripper):
    """The grasp term needs both pads squeezing the object: a gap that merely fits it (command 0.3 leaves
    5.4 cm around PickCube's 5 cm cube) used to pay the grasp reward every step without holding anything."""
    for seed in range(6):
        grasp_reward, rise = _hover_then_lift(env_id, gripper, seed, grasp_z)
        assert grasp_reward == 0.0, (seed, grasp_reward)
        assert rise < 0.02  # and indeed nothing was held


@pytest.mark.parametrize("seed", [3, 6])
def test_pads_striking_the_cube_for_one_step_earn_no_grasp_reward(seed):
    """Descending pads that strike a yawed cube's edges press on it with over 0.5 N for one step (an
    impact, under mujoco 3.8.1 and 4.0.1 alike), then rest lightly on it: no squeeze, nothing lifted. A
    one-step rule paid that impact (and under 3.8.1, the test above on seed 0)."""
    env = gym.make("hilrl/PickCube-v0")
    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    start_z, grasp_reward, strikes = float(obs["object"][2]), 0.0, []
    for t in range(40):
        to_cube = obs["object"][:3] - obs["ee_pos"]
        obs, _, _, _, info = env.step(np.append(np.clip(to_cube / base.action_scale, -1, 1), 0.2).astype(np.float32))
        grasp_reward += info["reward_terms"]["grasped"]
        if min(base.pad_forces(base.model.geom("cube").id)) >= 0.5:
            strikes.append(t)
    for _ in range(20):
        obs, *_ = env.step(np.array([0, 0, 1, 0.2], np.float32))
    env.close()
    assert len(strikes) == 1, strikes  # the impact is there, for one step
    assert grasp_reward == 0.0 and float(obs["object"][2]) - start_z < 0.02, (grasp_reward, obs["object"][2])


def test_the_experts_grasp_earns_the_grasp_reward_and_lifts_the_cube():
    env = gym.make("hilrl/PickCube-v0")
    expert = make_expert(env)
    obs, _ = env.reset(seed=3)
    expert.reset()
    grasped = []
    for _ in range(60):
        obs, _, terminated, _, info = env.step(expert(obs))
        grasped.append(info["reward_terms"]["grasped"])
        if terminated:
            break
    assert grasped[-1] == 1.0 and sum(grasped) >= 3 and obs["object"][2] > 0.06, (grasped, obs["object"][2])
    env.close()
