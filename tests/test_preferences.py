"""Preference feedback: the store, teachers, reward models, HERON, RAPL's OT, and runs that learn from labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from hilrl.cli import app
from hilrl.config import ConfigError, validate_config
from hilrl.errors import HilrlError
from hilrl.feedback.preferences.heron import heron_compare
from hilrl.feedback.preferences.models import RewardEnsemble, bradley_terry_loss, select_queries
from hilrl.feedback.preferences.segments import Segment
from hilrl.feedback.preferences.store import LabelRefused, PreferenceStore
from hilrl.feedback.preferences.teachers import PartialReturnTeacher, RegretTeacher

runner = CliRunner()


def segment(rewards, start_obs=(0.0,), end_obs=(0.0,)) -> Segment:
    rewards = np.asarray(rewards, np.float32)
    return Segment(0, 0, np.zeros((len(rewards), 2), np.float32), rewards,
                   start_obs=np.asarray(start_obs, np.float32), end_obs=np.asarray(end_obs, np.float32))


def store_with_queries(folder, count, size=2):
    store = PreferenceStore(folder)
    ids = []
    for _ in range(count):
        sids = [store.add_segment({"features": np.zeros((3, 2))}) for _ in range(size)]
        ids.append(store.add_query(sids))
    return store, ids


# ---- HERON ----------------------------------------------------------------------------------------

def test_heron_decides_at_the_first_level_that_differs_by_more_than_its_margin_and_skips_all_ties():
    sigmas = np.array([0.1, 0.5])
    first = np.array([[1.0, 0.0],    # level 0 decides: 1.0 > 0.8 + 0.1
                      [1.0, 0.0],    # level 0 within margin (0.05 < 0.1): level 1 decides for the second
                      [1.0, 2.0],    # within margin at level 0, first wins at level 1
                      [1.0, 1.0]])   # within margin at every level: skipped
    second = np.array([[0.8, 9.0],
                       [0.95, 1.0],
                       [1.05, 1.0],
                       [1.05, 1.4]])
    np.testing.assert_array_equal(heron_compare(first, second, sigmas), [1, -1, 1, 0])
    np.testing.assert_array_equal(heron_compare(second, first, sigmas), [-1, 1, -1, 0])


# ---- Bradley-Terry and regret ---------------------------------------------------------------------

def test_bradley_terry_loss_matches_a_hand_computed_example():
    # returns 2 vs 1, first preferred: -log(e^2 / (e^2 + e^1)) = log(1 + e^-1)
    # returns 0 vs 3, "equal" (0.5): -0.5 log σ(-3) - 0.5 log σ(3) = 0.5 (log(1+e^3) + log(1+e^-3))
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.5]))
    expected = (np.log1p(np.exp(-1.0)) + 0.5 * (np.log1p(np.exp(3.0)) + np.log1p(np.exp(-3.0)))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_the_regret_model_prefers_the_segment_that_ends_where_the_optimal_policy_expects_more():
    """Same partial return; one segment ends in a state worth more under V*: it has less regret."""
    value = lambda rows: rows[:, 0] * 10.0  # V*(s) = 10 * x  # noqa: E731
    optimal = segment([-1.0, -1.0], start_obs=[0.0], end_obs=[0.2])  # regret 0 - (-2 + 2) = 0
    poor = segment([-1.0, -1.0], start_obs=[0.0], end_obs=[0.0])  # regret 0 - (-2 + 0) = 2
    teacher = RegretTeacher(value)
    assert teacher.regret(optimal) == pytest.approx(0.0) and teacher.regret(poor) == pytest.approx(2.0)
    assert teacher.preference_probability(optimal, poor) == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert teacher.label_pair(optimal, poor) == "first" and teacher.label_pair(poor, optimal) == "second"
    partial = PartialReturnTeacher(equal_within=1e-6)
    assert partial.label_pair(optimal, poor) == "equal", "partial return cannot tell them apart"


def test_b_pref_teacher_knobs_myopia_equal_skip_and_mistakes():
    early_good, late_good = segment([1.0, 0.0, 0.0]), segment([0.0, 0.0, 0.9])
    assert PartialReturnTeacher().label_pair(early_good, late_good) == "first"
    assert PartialReturnTeacher(gamma=0.5).label_pair(early_good, late_good) == "second", "myopic: early steps fade"
    assert PartialReturnTeacher(equal_within=0.2).label_pair(early_good, late_good) == "equal"
    assert PartialReturnTeacher(skip_below=2.0).label_pair(early_good, late_good) == "skip"
    flips = [PartialReturnTeacher(eps_mistake=0.3, seed=s).label_pair(early_good, late_good) for s in range(400)]
    assert 0.2 < flips.count("second") / 400 < 0.4
    assert PartialReturnTeacher().rank([segment([0.0]), segment([2.0]), segment([1.0])]) == [1, 2, 0]


def test_disagreement_selection_picks_the_pairs_the_members_disagree_on():
    model = RewardEnsemble(1, members=2, hidden=[4])
    # member 0 rewards r = x, member 1 r = -x: an ensemble split on the sign of x
    model.per_member = lambda x: torch.stack([x.squeeze(-1), -x.squeeze(-1)])
    first = np.array([[[0.0]], [[2.0]], [[0.1]]], np.float32)  # (n, L=1, D=1)
    second = np.zeros_like(first)
    chosen = select_queries(model, first, second, 1, "disagreement", np.random.default_rng(0))
    assert chosen.tolist() == [1]
    assert len(select_queries(None, first, second, 2, "disagreement", np.random.default_rng(0))) == 2


def test_disagreement_over_k_way_rankings_sums_the_members_disagreement_over_the_expanded_pairs():
    from hilrl.feedback.preferences.models import select_rankings

    model = RewardEnsemble(1, members=2, hidden=[4])
    model.per_member = lambda x: torch.stack([x.squeeze(-1), -x.squeeze(-1)])  # members split on the sign of x
    # three 3-way candidates (n, K=3, L=1, D=1): all alike; one item apart; every item apart
    groups = np.array([[[[0.0]], [[0.0]], [[0.1]]], [[[0.0]], [[0.0]], [[2.0]]], [[[-1.0]], [[0.0]], [[1.5]]]],
                      np.float32)
    assert select_rankings(model, groups, 3, "disagreement", np.random.default_rng(0)).tolist() == [2, 1, 0]
    pairs = groups[:, :2]  # K = 2: the pair score of select_queries
    assert (select_rankings(model, pairs, 3, "disagreement", np.random.default_rng(0)).tolist()
            == select_queries(model, pairs[:, 0], pairs[:, 1], 3, "disagreement", np.random.default_rng(0)).tolist())
    assert select_rankings(model, groups, 1, "entropy", np.random.default_rng(0)).tolist() == [0], \
        "the ensemble mean is 0 for every pair: all equally uncertain, the first kept"


def test_a_run_asks_k_way_rankings_chosen_by_its_fitted_ensemble_and_learns_from_them(tmp_path):
    config = reach_config(tmp_path, {"source": "preferences", "kwargs": {
        "segment_length": 10, "ranking_size": 3, "first_query_at": 300, "query_every": 200, "queries_per_session": 15,
        "max_queries": 30, "epochs": 30, "obs_keys": ["ee_pos", "object"], "teacher": {"kind": "partial_return"}}})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    store = PreferenceStore.for_run(tmp_path / "run")
    queries = store.queries()
    assert len(queries) == 30 and {q["kind"] for q in queries} == {"ranking"}
    assert [q["source_version"] for q in queries[15:]] == [1] * 15, "the second session was chosen by a fitted model"
    assert {lab.label for lab in store.labels().values()} == {"ranking"}
    scalars = reward_scalars(tmp_path / "run")
    assert scalars["reward/labels"][-1] == 30 and scalars["reward/version"][-1] == 2
    assert scalars["reward/agreement"][-1] > 0.7, "90 pairs from 30 rankings teach the true reward's order"


# ---- RAPL's optimal transport ---------------------------------------------------------------------

def test_the_ot_plan_of_a_video_against_itself_is_near_diagonal_and_beats_a_shuffled_copy():
    from hilrl.feedback.preferences.rapl import cosine_cost, ot_plan, ot_score

    rng = np.random.default_rng(0)
    video = torch.as_tensor(rng.normal(size=(20, 16)), dtype=torch.float32)  # 20 frames of 16-d embeddings
    plan = np.asarray(ot_plan(cosine_cost(video, video).numpy(), reg=0.05))
    assert (plan.argmax(1) == np.arange(20)).all()
    assert np.trace(plan) > 0.9 * plan.sum(), "near-diagonal: almost all mass matches each frame with itself"
    shuffled = video[torch.as_tensor(rng.permutation(20))] + 0.5 * torch.randn(20, 16)
    assert float(ot_score(video, video)) > float(ot_score(video, shuffled))


def frames_of(colour, n=6, size=16, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.broadcast_to(np.asarray(colour, np.float64), (n, size, size, 3))
    frames = frames + rng.normal(0, noise, (n, size, size, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def image_rows(frames, episode=0):
    """Stored rows of one episode whose resulting frames are ``frames``, as a reward source sees them."""
    from hilrl.data.buffers import RewardBatch

    n, no = len(frames), np.zeros(len(frames), bool)
    return RewardBatch({"front": frames}, np.zeros((n, 4), np.float32), {"front": frames}, no, no,
                       np.zeros(n, np.float32), {}, no, no, np.full(n, episode), np.arange(n))


def test_rapl_refits_when_new_triplets_arrive_in_the_run_store_and_bumps_its_version(tmp_path):
    from hilrl.config import RewardConfig
    from hilrl.feedback.preferences.rapl import RaplModel, make_rapl_source
    from hilrl.feedback.rewards import SourceContext

    model = RaplModel(seed=0)
    model.set_demos([frames_of((200, 40, 40), seed=k, noise=10) for k in range(2)])  # the expert's videos: red
    model.save(tmp_path / "rapl.pt")
    config = RewardConfig(source="rapl", kwargs={"model": str(tmp_path / "rapl.pt"), "refit_every": 50, "epochs": 2})
    source = make_rapl_source(config, SourceContext(run_dir=tmp_path / "run"))
    rollout = image_rows(frames_of((120, 120, 40), noise=10))
    before = source(rollout)
    assert source.after_step({}, None, 50) is None and source.version == 0, "no triplets yet"
    store = PreferenceStore.for_run(tmp_path / "run")  # a person ranks three videos on the page: red > yellow > green
    sids = [store.add_segment({"frames": frames_of(c, noise=10, seed=9)}) for c in ((40, 200, 40), (200, 40, 40),
                                                                                  (120, 120, 40))]
    store.add_label(store.add_query(sids), "ranking", "ana", order=[1, 2, 0])
    assert source.after_step({}, None, 60) is None, "between looks at the store"
    scalars = source.after_step({}, None, 100)
    assert scalars["triplets"] == 1 and source.version == 1
    assert not np.allclose(source(rollout), before), "the head moved and the demos were embedded again"
    assert source.after_step({}, None, 150) is None and source.version == 1, "no new triplet: no refit"
    old = RaplModel.load(tmp_path / "rapl.pt")
    old.demo_videos = []
    old.save(tmp_path / "old.pt")
    with pytest.raises(HilrlError, match="set_demos"):
        make_rapl_source(RewardConfig(source="rapl", kwargs={"model": str(tmp_path / "old.pt"), "refit_every": 50}),
                         SourceContext(run_dir=tmp_path / "run"))


# ---- the store ------------------------------------------------------------------------------------

def test_labels_survive_kill_9_mid_write_and_the_store_stays_usable(tmp_path):
    """A real writer process appends labels and prints each one's id once add_label returned; SIGKILL it."""
    store, ids = store_with_queries(tmp_path / "prefs", 400)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from hilrl.feedback.preferences.store import PreferenceStore
        store = PreferenceStore({str(tmp_path / 'prefs')!r})
        for i in range(400):
            store.add_label(f"q{{i:06d}}", "first" if i % 2 else "second", "writer")
            print(i, flush=True)
        """)], stdout=subprocess.PIPE, text=True)
    acked = []
    for line in writer.stdout:
        acked.append(int(line))
        if len(acked) == 60:
            os.kill(writer.pid, signal.SIGKILL)
            break
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    labels = store.labels()
    for i in acked:
        assert labels[f"q{i:06d}"].label == ("first" if i % 2 else "second"), f"acknowledged label {i} lost"
    with open(store.labels_path, "ab") as f:  # as if a writer died halfway through a line
        f.write(b'{"id": 999, "query": "q000399", "lab')
    assert store.labels().keys() == labels.keys(), "a torn line is ignored"
    store.add_label("q000399", "equal", "me")
    assert store.labels()["q000399"].label == "equal"


def test_a_query_is_labelled_once_undo_reopens_it_and_rankings_export_as_pairs(tmp_path):
    store, (q0, q1) = store_with_queries(tmp_path, 2)
    _, (ranking,) = store_with_queries(tmp_path, 1, size=3)
    store.add_label(q0, "first", "ann")
    with pytest.raises(LabelRefused, match="already labelled"):
        store.add_label(q0, "second", "bob")
    with pytest.raises(LabelRefused, match="not one of"):
        store.add_label(q1, "left", "ann")
    with pytest.raises(LabelRefused, match="permutation"):
        store.add_label(ranking, "ranking", "ann", order=[0, 0, 1])
    store.add_label(ranking, "ranking", "ann", order=[2, 0, 1])
    assert store.undo_last("ann").query == ranking and [q["id"] for q in store.pending()] == [q1, ranking]
    store.add_label(ranking, "ranking", "ann", order=[2, 0, 1])
    store.add_label(q1, "equal", "ann")
    lines = [json.loads(x) for x in open(tmp_path / "trl.jsonl")] if store.export_trl(tmp_path / "trl.jsonl") else []
    queries = {q["id"]: q["segments"] for q in store.queries()}
    r = [f"segment:{s}" for s in queries[ranking]]
    assert [(x["chosen"], x["rejected"]) for x in lines] == [
        (f"segment:{queries[q0][0]}", f"segment:{queries[q0][1]}"), (r[2], r[0]), (r[2], r[1]), (r[0], r[1])]
    assert all(set(x) == {"prompt", "chosen", "rejected"} for x in lines)


def test_concurrent_labellers_never_double_count(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store, ids = store_with_queries(tmp_path, 10)

    def attempt(args):
        who, qid = args
        try:
            PreferenceStore(tmp_path).add_label(qid, "first", who)
            return 1
        except LabelRefused:
            return 0

    with ThreadPoolExecutor(8) as pool:
        made = sum(pool.map(attempt, [(f"p{k}", q) for q in ids for k in range(4)]))
    assert made == 10 and len(store.labels()) == 10
    assert sum(1 for line in open(store.labels_path)) == 10


# ---- reward sources in runs -----------------------------------------------------------------------

def reach_config(tmp_path, reward, steps=700, **train):
    config = {"env": {"id": "hilrl/Reach-v0"}, "demos": {"episodes": 0},
              "algo": {"name": "sac", "obs_keys": ["ee_pos", "object"], "hidden": [64, 64]},
              "reward": reward,
              "train": {"steps": steps, "learning_starts": 600, "random_steps": 600, "eval_episodes": 2,
                        "checkpoint_every": 100_000, "video": False, **train}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def reward_scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [s.value for s in events.Scalars(tag)] for tag in events.Tags()["scalars"] if tag.startswith("reward/")}


def test_a_run_learns_a_reward_agreeing_with_the_true_one_from_a_synthetic_teacher(tmp_path):
    """``hilrl train`` with preferences: queries, labels, refits (version bumps) and agreement with the true reward."""
    config = reach_config(tmp_path, {"source": "preferences", "kwargs": {
        "segment_length": 10, "first_query_at": 300, "query_every": 200, "queries_per_session": 40,
        "max_queries": 80, "epochs": 60, "obs_keys": ["ee_pos", "object"], "teacher": {"kind": "partial_return"}}})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    scalars = reward_scalars(tmp_path / "run")
    assert scalars["reward/labels"][-1] == 80 and scalars["reward/version"][-1] == 2
    assert scalars["reward/agreement"][-1] > 0.8, scalars["reward/agreement"]
    assert scalars["reward/spearman"][-1] > 0.7
    store = PreferenceStore.for_run(tmp_path / "run")
    assert {lab.who for lab in store.labels().values()} == {"synthetic"} and not store.pending()
    assert "PreferenceSource" in json.loads((tmp_path / "run" / "metrics.json").read_text())["reward"]


def human_run(tmp_path, name, steps=300, **reward_kwargs):
    """``hilrl train`` (the installed command, as a user runs it) on a preference run without a teacher."""
    sys.path.insert(0, os.path.dirname(__file__))
    from preference_helpers import human_config

    config = human_config(steps=steps, queries=6, **reward_kwargs)
    config["train"]["log_every"] = 50
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / name
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "hilrl"), "train", str(path), "--out",
                           str(run)], capture_output=True, text=True, env={**os.environ, "MUJOCO_GL": "egl"},
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return run, done.stdout + done.stderr


def test_a_run_without_a_teacher_says_once_how_to_label_and_shows_labels_and_pending(tmp_path):
    """Issue 29: the run says queries wait, with the exact `hilrl label RUN`, once; progress and TensorBoard count."""
    run, output = human_run(tmp_path, "run")
    assert output.count(f"hilrl label {run}`") == 1, output
    assert "6 preference queries wait for a person" in output
    assert "labels 0  pending 6  reward v0 (0 until labels)" in output, output
    scalars = reward_scalars(run)
    assert scalars["reward/pending"][-1] == 6 and scalars["reward/labels"][-1] == 0
    assert scalars["reward/version"][-1] == 0
    assert "reward='zero'" in json.loads((run / "metrics.json").read_text())["reward"]


def test_wait_for_labels_trains_on_the_env_reward_until_n_labels_then_on_the_learned_one(tmp_path):
    """``wait_for_labels: 2``: the env's reward before 2 labels (said on screen and in metrics.json), learned after."""
    run, output = human_run(tmp_path, "run", wait_for_labels=2)
    assert "(env until 2 labels)" in output and "until 2 labels are in it trains on the env reward" in output
    assert "reward='env until 2 labels'" in json.loads((run / "metrics.json").read_text())["reward"]
    store = PreferenceStore.for_run(run)
    for query in store.pending()[:2]:
        store.add_label(query["id"], "first", "ann")
    config = tmp_path / "run.yaml"
    result = runner.invoke(app, ["train", str(config), "--out", str(run), "--steps", "340"])
    assert result.exit_code == 0, result.output
    reward = json.loads((run / "metrics.json").read_text())["reward"]
    assert "labels=2" in reward and "version=1" in reward and "reward='learned'" in reward, reward


def random_reach_with(settings):
    """Reach stepped at random into a replay whose reward source is a preference model of ``settings`` (its
    synthetic teacher labels); returns env, replay, source, counters and ``step()``, which stores one step and
    hands it to the source (returning the source's scalars)."""
    import tempfile

    import gymnasium as gym

    import hilrl.envs  # noqa: F401
    from hilrl.data.buffers import Replay
    from hilrl.feedback.preferences.source import PreferenceSource
    from hilrl.runtime.seeds import Seeds
    from hilrl.runtime.steps import StepSource, TransitionStorage, fresh_counters

    env = gym.make("hilrl/Reach-v0", max_episode_steps=20)
    replay = Replay.create(env.observation_space, env.action_space, 1000)
    source = PreferenceSource(settings, PreferenceStore(tempfile.mkdtemp()), seed=0)
    replay.set_reward_source(source)
    counters = fresh_counters()
    steps = StepSource(env, lambda o: env.action_space.sample(), Seeds(0), counters, random_steps=1000)
    storage = TransitionStorage(replay, copy_interventions=False)

    def step():
        storage.add(transition := steps.step())
        return source.after_step(transition, replay, counters["env_steps"]) or {}

    return env, replay, source, counters, step


def test_wait_for_labels_rewards_rows_with_the_fallback_until_then():
    """Stored rows: the env's reward (or PEBBLE's state entropy, with unsupervised_steps) until N labels are fitted."""
    from hilrl.feedback.preferences.source import PreferenceSettings

    for unsupervised in (0, 50):
        settings = PreferenceSettings(segment_length=5, first_query_at=100, query_every=100, queries_per_session=20,
                                      max_queries=40, epochs=20, wait_for_labels=40, unsupervised_steps=unsupervised,
                                      obs_keys=["ee_pos", "object"], teacher={"kind": "partial_return"})
        env, replay, source, counters, step = random_reach_with(settings)
        seen = {}
        for _ in range(202):
            step()
            if counters["env_steps"] in (150, 202):
                seen[counters["env_steps"]] = (replay.online.gather(np.arange(50))["rewards"].copy(),
                                               source.reward_phase())
        env.close()
        true = replay.online.rewards[:50]
        rewards, phase = seen[150]
        if unsupervised:  # 20 labels of 40 at step 150: pre-training goes on past its 50 steps
            assert phase == "entropy until 40 labels" and (rewards > 0).all() and not np.allclose(rewards, true)
        else:
            assert phase == "env until 40 labels" and np.allclose(rewards, true), "the env's reward meanwhile"
        rewards, phase = seen[202]
        assert phase == "learned" and (rewards <= 1e-6).all() and not np.allclose(rewards, true)


def test_a_refit_mid_run_moves_the_rewards_of_rows_stored_before_it():
    from hilrl.feedback.preferences.source import PreferenceSettings

    settings = PreferenceSettings(segment_length=5, first_query_at=100, query_every=100, queries_per_session=20,
                                  max_queries=40, epochs=20, teacher={"kind": "partial_return"})
    env, replay, source, counters, step = random_reach_with(settings)
    rewards_by_version = {}
    for _ in range(200):
        step()
        if counters["env_steps"] in (99, 150, 200):
            rewards_by_version[source.version] = replay.online.gather(np.arange(50))["rewards"].copy()
    env.close()
    assert sorted(rewards_by_version) == [0, 1, 2]
    assert (rewards_by_version[0] == 0).all(), "no labels yet: reward 0"
    assert not np.allclose(rewards_by_version[1], rewards_by_version[0])
    assert not np.allclose(rewards_by_version[2], rewards_by_version[1]), "the second refit relabelled old rows"
    true = replay.online.rewards[:50]
    assert np.corrcoef(rewards_by_version[2], true)[0, 1] > 0.5


def test_pebble_state_entropy_pays_more_for_states_far_from_those_stored():
    from hilrl.feedback.preferences.entropy import StateEntropy, knn_distances

    rng = np.random.default_rng(0)
    seen = rng.normal(0.0, 0.05, size=(500, 3))  # states the buffer holds: a tight cluster at the origin
    assert knn_distances(np.array([[0.0, 0.0, 3.0]]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), 1) == 2.0
    entropy = StateEntropy(k=5)
    entropy.refresh(seen)
    rewards = entropy(np.concatenate([seen[:20], [[0.5, 0.5, 0.0], [1.0, -1.0, 1.0]]]))
    familiar, novel = rewards[:20], rewards[20:]
    assert novel.min() > 5 * familiar.max() and novel[1] > novel[0], "farther from what was seen: more reward"
    assert (familiar > 0).all(), "the state itself (distance 0) is skipped: BPref's k + 1"
    raw = knn_distances(seen[:20], seen, 6)
    assert entropy.stats.count == 22 and np.allclose(familiar * entropy.stats.std, raw, rtol=1e-5), \
        "distances over their running std"


def test_pebble_pretraining_rewards_state_entropy_then_switches_to_the_learned_reward():
    """``unsupervised_steps``: entropy rewards on every stored row until then, the preference model's after."""
    from hilrl.feedback.preferences.source import PreferenceSettings

    settings = PreferenceSettings(segment_length=5, first_query_at=60, query_every=100, queries_per_session=40,
                                  max_queries=80, epochs=20, obs_keys=["ee_pos", "object"], unsupervised_steps=100,
                                  entropy_refresh=25, teacher={"kind": "partial_return"})
    env, replay, source, counters, step = random_reach_with(settings)
    seen, phases, labelled_by = {}, [], {}
    for _ in range(200):
        scalars = step()
        if "pretraining" in scalars:
            phases.append((counters["env_steps"], scalars["pretraining"]))
        if counters["env_steps"] in (99, 200):
            seen[counters["env_steps"]] = replay.online.gather(np.arange(50))["rewards"].copy()
            labelled_by[counters["env_steps"]] = len(source.store.labels())
    env.close()
    assert phases[0] == (1, 1.0) and phases[-1] == (100, 0.0) and all(p == 1.0 for _, p in phases[:-1])
    assert [step for step, _ in phases[1:-1]] == [25, 50, 75], "re-rewarded against the grown buffer"
    assert (seen[99] > 0).all() and seen[99].std() > 0, "pre-training: k-NN distances, positive, varying"
    assert labelled_by[99] == 40, "queries asked and labelled during pre-training; their fit waits for the switch"
    assert (seen[200] <= 1e-6).all(), "the learned reward: shifted so that the best stored row gets 0"
    true = replay.online.rewards[:50]
    assert np.corrcoef(seen[200], true)[0, 1] > 0.5
    assert np.corrcoef(seen[99], true)[0, 1] < np.corrcoef(seen[200], true)[0, 1]


def test_heron_trains_from_the_factor_ranking_alone(tmp_path):
    config = reach_config(tmp_path, {"source": "heron", "kwargs": {
        "factors": [{"term": "distance", "better": "lower"}], "start_after": 300, "update_every": 200,
        "pairs": 1024, "epochs": 10, "hidden": [64, 64], "lr": 1e-3}})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    scalars = reward_scalars(tmp_path / "run")
    assert scalars["reward/version"][-1] >= 2 and scalars["reward/decided_pairs"][-1] > 0
    assert scalars["reward/skipped_pairs"][-1] > 0, "pairs within one sigma of distance are tied and skipped"


def test_bad_settings_and_runtimes_are_refused_with_the_key_named(tmp_path):
    config = reach_config(tmp_path, {"source": "preferences", "kwargs": {"segment_lenght": 10}})
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "unknown key 'reward.kwargs.segment_lenght'" in str(result.exception)
    config = reach_config(tmp_path, {"source": "heron", "kwargs": {"factors": [{"term": "grasp", "better": "lower"}],
                                                                   "start_after": 10}}, steps=20)
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "run2")])
    assert "HERON factor 'grasp' is not among the task's reward terms ['distance']" in str(result.exception)
    from hilrl.feedback.rewards import make_reward_source

    with pytest.raises(HilrlError, match="runtime: distributed"):  # the distributed learner builds sources so
        make_reward_source(validate_config({"env": {"id": "hilrl/Reach-v0"}, "algo": {"name": "sac"},
                                            "reward": {"source": "preferences"}}).reward_config)
    with pytest.raises(ConfigError, match="neither one of"):
        validate_config({"env": {"id": "hilrl/Reach-v0"}, "reward": "preference"})
