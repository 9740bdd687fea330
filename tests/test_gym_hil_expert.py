"""hilrl's scripted pick expert for gym-hil's PandaPickCube (hilrl.feedback.gym_hil_expert), through the env adapter
as `hilrl record` and the simulated person use it. gym-hil needs mujoco<3.9: these run in the second venv."""

import numpy as np
import pytest

pytest.importorskip("gym_hil", reason="gym-hil is not installed here (it needs mujoco<3.9: run these in the second "
                                      "venv, pip install 'hilrl[gym-hil]')")

pytestmark = pytest.mark.gym_hil


def episodes(env, expert, seeds, max_steps=40):
    """(successes within ``max_steps``, episode lengths) of ``expert`` on ``env`` over ``seeds`` (numpy's global
    generator seeded too: gym-hil draws the random block position from it)."""
    successes, lengths = 0, []
    for seed in seeds:
        np.random.seed(seed)
        obs, _ = env.reset(seed=seed)
        expert.reset()
        for step in range(max_steps):
            obs, _, terminated, truncated, info = env.step(expert(obs))
            if terminated or truncated:
                break
        successes += info["is_success"]
        lengths.append(step + 1)
    return successes, lengths


def test_the_expert_picks_a_randomly_placed_block_and_noise_makes_it_worse():
    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env
    from hilrl.feedback.experts import make_expert

    env = make_env(EnvConfig(id="gym_hil/PandaPickCubeBase-v0", kwargs={"random_block_position": True}))
    best, lengths = episodes(env, make_expert(env, noise=0.0, seed=0), range(3))
    assert best == 3, lengths  # each block lifted 0.1 m within 4 s of sim time (the time limit is 10 s)
    worst, _ = episodes(env, make_expert(env, noise=1.0, seed=0), range(2))
    assert worst == 0  # mostly random motion: no pick in that time
    env.close()


def test_the_expert_takes_over_mid_episode_from_a_policy_that_wandered_off():
    """A simulated person starts from wherever the policy left the arm: the expert reads its phase from the
    observation (gripper closed on nothing: open first)."""
    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env
    from hilrl.feedback.experts import make_expert

    env = make_env(EnvConfig(id="gym_hil/PandaPickCubeBase-v0"))
    obs, _ = env.reset(seed=0)
    for _ in range(5):  # wander off to one side, closing the gripper on nothing
        obs, *_ = env.step(np.array([-0.03, 0.03, 0.02, 0, 0, 0, 1], np.float32))
    assert obs["agent_pos"][14] > 200  # the gripper command is closed
    expert = make_expert(env)
    for _ in range(60):
        obs, _, terminated, _, info = env.step(expert(obs))
        if terminated:
            break
    assert info["is_success"]
    env.close()
