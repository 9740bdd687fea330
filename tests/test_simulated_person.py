"""The simulated person (``intervention.source: person``) and the intervention data it leaves for the learner.

A user configures the person in YAML (``intervention: {source: person, kwargs: {...}}``), runs ``hilrl train``
and reads the progress line and TensorBoard; these tests drive the same pieces: the configured interventionist
in front of a policy on a real MuJoCo task.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import hilrl  # noqa: F401  (registers the tasks)
from hilrl.config import validate_config
from hilrl.errors import HilrlError
from hilrl.feedback.experts import make_expert
from hilrl.feedback.interventions import InterventionContext, InterventionWrapper, make_interventionist


def person_env(task: str, noise: float = 0.0, source: str = "person", **kwargs) -> InterventionWrapper:
    """``hilrl/<task>-v0`` behind the interventionist a config with ``intervention: {source, kwargs}`` builds."""
    extra = {"kwargs": kwargs} if source == "person" else kwargs
    config = validate_config({"env": {"id": f"hilrl/{task}-v0"}, "algo": {"name": "sac"},
                              "intervention": {"source": source, "expert_noise": noise, **extra}})
    env = gym.make(config.env.id)
    return InterventionWrapper(env, make_interventionist(config.intervention,
                                                         InterventionContext(env, expert_seed=0, gate_seed=0)))


def roll(env: InterventionWrapper, policy, seed: int) -> tuple[list[bool], bool]:
    """One episode: whether the person drove each step, and whether it ended in success."""
    obs, _ = env.reset(seed=seed)
    getattr(policy, "reset", lambda: None)()
    marks = []
    while True:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        marks.append(info["intervened"])
        if terminated or truncated:
            return marks, info["is_success"]


def test_the_person_leaves_a_policy_that_works_alone():
    """HIL-SERL's operators rarely step in once the policy works: the expert's own actions on PickCube."""
    env = person_env("PickCube")
    policy = make_expert(env, seed=1)
    marks = [m for seed in range(8) for m in roll(env, policy, seed)[0]]
    assert np.mean(marks) < 0.05, np.mean(marks)


def test_the_person_steps_in_when_the_arm_stalls_and_hands_back_once_it_moves_on():
    env = person_env("Reach", stall_steps=10, reaction_steps=2, min_takeover=2, patience=None)
    marks, success = roll(env, lambda obs: np.zeros(4, np.float32), seed=0)  # an arm that never moves
    marks = np.asarray(marks)
    # 10 steps without progress, then 2 of reaction while the policy still acts: the person drives from step 12
    assert not marks[:12].any() and marks[12]
    segments = np.flatnonzero(np.diff(np.r_[0, marks.astype(int), 0])).reshape(-1, 2)
    lengths = segments[:, 1] - segments[:, 0]
    assert (lengths[:-1] >= 2).all() and (lengths <= 30).all()
    # it hands back after each takeover that made progress: the stalled policy gets the arm again
    assert len(segments) >= 2 and (segments[1:, 0] - segments[:-1, 1] >= 12).all() and success


def test_the_person_steps_in_at_once_when_the_arm_heads_away_from_the_goal():
    env = person_env("Reach", stall_steps=10, reaction_steps=1)
    expert = make_expert(env)
    marks, success = roll(env, lambda obs: -expert(obs), seed=1)  # straight away from the goal
    first = int(np.argmax(marks))
    assert 0 < first < 10, "a regression is caught before the stall clock would run out"
    assert success and env.source.reasons.get("regress", 0) >= 1


def test_the_patient_person_finishes_the_episode_after_the_last_takeover():
    env = person_env("Reach", patience=1)
    expert = make_expert(env)
    marks, success = roll(env, lambda obs: -expert(obs), seed=2)
    first = int(np.argmax(marks))
    assert all(marks[first:]) and success  # one takeover, held to the episode's end


class BacksOffOnce:
    """The expert, except that once near the cube it lifts away for ``steps`` steps (and opens the gripper), as a
    learning policy lining up a grasp does, then carries on: it still picks the cube alone."""

    def __init__(self, env, steps: int = 2):
        self.expert, self.steps, self.env = make_expert(env), steps, env

    def reset(self):
        self.left = self.steps

    def __call__(self, obs):
        near = self.env.unwrapped._reward_and_success()[2]["reach"] > 0.85
        if self.left and (near or self.left < self.steps):
            self.left -= 1
            return np.array([0, 0, 1, 1], np.float32)
        return self.expert(obs)


def test_a_dip_the_policy_recovers_from_alone_is_no_failure():
    """Defect (issue 27): the person read any one-step fall of progress as heading for failure. A learning
    PickCube policy often lifts off the cube for a step or two while lining up its grasp (progress 0.23 -> 0.07
    -> 0.13 -> 0.23) and then picks it alone (96% of such moments in a 12.5k-step checkpoint's rollouts); the
    person took over at once, most of the takeovers of a 15k-step run. A fall counts once it lasts."""
    env = person_env("PickCube", reaction_steps=0)
    policy = BacksOffOnce(env)
    for seed in range(2):
        marks, success = roll(env, policy, seed)
        assert not any(marks) and success, f"seed {seed}: the person took over {sum(marks)} steps of a recovering arm"


def test_the_person_still_catches_a_dropped_cube():
    """What regress_steps must not lose: a cube dropped on the way to the goal stays down, and the person takes
    over within regress_steps + reaction_steps and finishes the pick."""
    env = person_env("PickCube", patience=None)
    expert = make_expert(env)
    state = {"dropped": False}

    def drops(obs):
        held = env.unwrapped.is_grasped() and obs["object"][2] > 0.06
        state["dropped"] |= held
        return np.array([0, 0, 0.3, 1], np.float32) if state["dropped"] else expert(obs)  # open, drift up

    marks, success = roll(env, drops, seed=0)
    assert state["dropped"] and any(marks) and success
    assert env.source.reasons.get("regress", 0) >= 1


def test_a_person_taking_over_an_arm_that_holds_the_cube_by_its_edge_keeps_it():
    """Defect (issue 27): the expert the person drives counted a cube as held only within 2 cm of the tool centre,
    while PickCube's grasp rule counts a squeezed cube up to 4 cm off; taking over a learning arm that had lifted
    the cube by its edge, the person opened the fingers and dropped it (3 of 8 such takeovers in a checkpoint's
    rollouts), then had to pick it again."""
    env = gym.make("hilrl/PickCube-v0")
    obs, _ = env.reset(seed=0)
    expert = make_expert(env)
    cube, goal = np.array([0.5, 0.0, 0.15]), np.array([0.45, 0.1, 0.25])
    obj = np.asarray(obs["object"], np.float32).copy()
    obj[:3], obj[3:7], obj[7:10] = cube, (1, 0, 0, 0), goal
    width = 2 * env.unwrapped.cube_half
    held = {"ee_pos": (cube + (0.023, 0.0, 0.005)).astype(np.float32), "gripper": np.array([width / 0.08], np.float32),
            "object": obj}
    action = expert(held)
    assert action[-1] < 0, "the person opened the fingers on a lifted cube"
    assert float(action[:3] @ (goal - cube)) > 0  # and carries it on towards the goal
    resting = {**held, "object": np.r_[np.r_[cube[:2], env.unwrapped.cube_half], obj[3:]].astype(np.float32)}
    assert expert(resting)[-1] > 0  # a cube on the table 2.3 cm from half-closed fingers is not held: open, re-grasp


def test_a_person_who_cannot_finish_the_task_ends_the_episode_instead_of_driving_on():
    """Defect (issue 27): with the cube knocked out of the arm's reach the expert pushes against the workspace's
    wall; the person drove it so, 30 steps, a hand-back, 30 more, then to the time limit: in a 15k-step run three
    such episodes were 75% of the person's steps over the last 2k. An operator resets such a scene: the episode
    ends as a failure (truncated, so the learner bootstraps) after ``give_up_steps`` of driving that gets nowhere."""
    env = person_env("PickCube", stall_steps=10, reaction_steps=2, give_up_steps=10)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped
    base.data.qpos[base._cube_qadr: base._cube_qadr + 3] = (0.8, 0.2, base.cube_half)  # flung off the workspace
    marks = []
    while True:
        obs, _, terminated, truncated, info = env.step(np.zeros(4, np.float32))
        marks.append(info["intervened"])
        if terminated or truncated:
            break
    assert truncated and not terminated and not info["is_success"] and info["verdict"] == "failure"
    assert env.source.given_up == 1  # metrics.json: episodes_given_up
    # the person's first takeover gains a little (the arm moves towards the cube until the wall stops it) and hands
    # back; the next one gets nowhere and ends the episode after give_up_steps, far before the 100-step limit
    last_takeover = int(np.argmin(marks[::-1]))  # the trailing run of steps the person drove
    assert marks[-1] and last_takeover <= 10 + 1 and len(marks) < 50, f"{len(marks)} steps, {sum(marks)} by the person"


def test_a_person_reaching_for_the_controls_stands_down_when_the_arm_moves_on_alone():
    """Defect (issue 27): once triggered, the person took over after the reaction delay even if the arm had
    meanwhile got going again. Here the arm idles for the 10 steps of ``stall_steps`` and then moves on alone."""
    env = person_env("Reach", stall_steps=10, reaction_steps=2, patience=None)
    expert = make_expert(env)
    steps = {"n": 0}

    def idles_then_goes(obs):
        steps["n"] += 1
        return np.zeros(4, np.float32) if steps["n"] <= 10 else expert(obs)

    marks, success = roll(env, idles_then_goes, seed=0)
    assert not any(marks) and success and env.source.reasons == {}


def test_the_person_stops_an_arm_pushing_out_of_its_workspace():
    env = person_env("Reach", workspace_margin=0.02)
    env.reset(seed=0)
    low, high = env.unwrapped.workspace
    at_wall = {"ee_pos": np.array([low[0] + 0.01, 0.0, 0.2], np.float32), "object": np.zeros(3, np.float32)}
    out, along = np.array([-1, 0, 0, 1], np.float32), np.array([0, 1, 0, 1], np.float32)
    assert env.source.trigger(at_wall, out, out) == "workspace"
    assert env.source.trigger(at_wall, along, along) is None


@pytest.mark.parametrize("kwargs, field", [({"stall_steps": 0}, "stall_steps"),
                                           ({"min_takeover": 9, "max_takeover": 3}, "min_takeover"),
                                           ({"patiance": 2}, "patiance")])
def test_a_bad_person_setting_names_the_field(kwargs, field):
    with pytest.raises(HilrlError) as raised:
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "sac"},
                         "intervention": {"source": "person", "kwargs": kwargs}})
    assert "intervention.kwargs" in str(raised.value) and field in str(raised.value)


def test_a_noisy_person_judges_the_policy_by_what_they_mean_to_do_not_by_their_own_slips():
    """Defect (issue 27): the distance gate compared the policy with the *noisy* expert's action, so the
    gate fired on the expert's own slips (noise 0.5: a random action on a quarter of the steps) and stored those
    slips as corrections, even for a policy that did exactly what the expert means. A person decides on
    what they intend and executes it with their noise."""
    env = person_env("PickCube", noise=0.5, source="distance", threshold=1.0)
    policy = make_expert(env)  # does what the person means to do
    marks = [m for seed in range(4) for m in roll(env, policy, seed)[0]]
    assert np.mean(marks) < 0.02, f"the person took over {np.mean(marks):.0%} of the steps of a perfect policy"


def test_progress_is_the_share_of_the_way_to_the_goal_whatever_reward_the_learner_sees():
    from hilrl.feedback.interventions import TaskProgress

    env = gym.make("hilrl/Reach-v0", reward_type="sparse")
    obs, info = env.reset(seed=3)
    progress = TaskProgress(env)
    assert progress.reset() == 0.0
    start = info["reward_terms"]["distance"]
    expert = make_expert(env)
    obs, reward, *_, info = env.step(expert(obs))
    assert reward == 0.0  # sparse: the learner sees nothing yet, the person sees the arm get closer
    share = progress(reward)
    assert share == pytest.approx(1 - info["reward_terms"]["distance"] / start, abs=1e-6) and share > 0


def test_on_a_foreign_env_progress_is_the_env_reward_since_the_start():
    from hilrl.feedback.interventions import TaskProgress

    progress = TaskProgress(gym.make("Pendulum-v1"))
    assert progress.reset() is None  # nothing to read before the first step
    assert progress(-3.0) == 0.0 and progress(-1.0) == 2.0


@pytest.mark.slow
def test_the_demo_job_learns_reach_while_the_person_steps_back(tmp_path):
    """`make demo` (issue 27 acceptance): Reach learned (>= 95%) and the person's share of steps falls from
    the first logged window to the last (measured: 41% at 300 env steps, 0% from 2300 on; 100% on 50 episodes)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "demo"
    trained = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(root / "sim_configs/reach_hil.yaml"),
                              "--out", str(run)], capture_output=True, text=True, cwd=root, timeout=3600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["success_rate"] >= 0.95 and metrics["intervention_source"] == "person"
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    rate = [e.value for e in events.Scalars("rollout/intervention_rate")]
    own = [e.value for e in events.Scalars("rollout/own_success_rate")]
    assert rate[0] > 0.2 and rate[-1] < 0.05, rate
    assert own[0] < 0.5 and own[-1] >= 0.9, own
