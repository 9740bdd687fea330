"""Actor and learner as separate processes on loopback: kill -9 and restart of either loses nothing acked.

The learner's online buffer is checked as a chain: with one actor and no interventions it holds
the actor's steps in order, so ``next_obs[i] == obs[i + 1]`` inside every episode. A lost or a
duplicated transition breaks the chain; the counts must match exactly.
"""

import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

from hilrl.data.buffers import ReplayBuffer, shared_next_rows, slice_shared
from hilrl.config import validate_config
from hilrl.envs.protocol import encode
from hilrl.runtime.distributed import transport

STEPS = 500


def write_config(path: Path, **runtime) -> Path:
    raw = {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [32, 32], "batch_size": 32, "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": STEPS, "learning_starts": 100, "eval_episodes": 2, "checkpoint_every": 150, "video": False},
        "runtime": {"mode": "distributed", "max_unacked": 40, "ack_timeout_s": 1.0, **runtime},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def hilrl(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hilrl.cli", *args], stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT)


def start_learner(config: Path, run: Path, bind: str = "tcp://127.0.0.1:*") -> subprocess.Popen:
    return hilrl("learner", str(config), "--out", str(run), "--bind", bind, "--quiet", log=run.parent / "learner.log")


def start_actor(config: Path, address: str, folder: Path) -> subprocess.Popen:
    return hilrl("actor", str(config), "--learner", address, "--out", str(folder), "--id", "arm", "--quiet",
                 log=folder.parent / "actor.log")


def wait_for(predicate, what: str, timeout: float = 120.0, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"a process exited early ({proc.args}) while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))


def spooled_unacked(folder: Path) -> int:
    """Transitions in the actor's spool the learner has not acked, read from its files as a restart reads them."""
    state = folder / "actor_state.json"
    acked = json.loads(state.read_text())["acked"] if state.exists() else 0
    total = 0
    for _, frames in transport.read_records(folder / "spool"):  # a record is a batch of steps seq, seq + 1, ...
        message = transport.read_message(frames)
        total += sum(message["seq"] + i > acked for i in range(len(message["t"]["reward"])))
    return total


def logged_after_checkpoint(run: Path) -> int:
    """Transitions in the learner's log (a record is a batch), i.e. stored after its last checkpoint."""
    return sum(len(transport.read_message(frames)["t"]["reward"]) for _, frames in transport.read_records(run / "log"))


def online_buffer(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "checkpoints" / f"replay_online_{STEPS}.npz") as f:
        return {k.replace("::", "/"): f[k] for k in f.files}


def chain_breaks(buffer: dict[str, np.ndarray]) -> int:
    """Steps i, not the end of an episode, whose next_obs is not obs[i + 1]."""
    ends = buffer["terminated"] | buffer["truncated"]
    keys = [k[4:] for k in buffer if k.startswith("obs/")]
    same = np.ones(len(ends) - 1, bool)
    for key in keys:
        a, b = buffer[f"next_obs/{key}"][:-1], buffer[f"obs/{key}"][1:]
        same &= (a == b).reshape(len(same), -1).all(axis=1)
    return int((~same & ~ends[:-1]).sum())


def ring_chain_breaks(ring: ReplayBuffer, n: int) -> int:
    """:func:`chain_breaks` of a replay ring's first ``n`` slots, next_obs as the ring hands it out."""
    stored = ring.gather(np.arange(n))
    return chain_breaks({"terminated": stored["terminated"], "truncated": stored["truncated"],
                         **{f"obs/{k}": v for k, v in stored["obs"].items()},
                         **{f"next_obs/{k}": v for k, v in stored["next_obs"].items()}})


def finish(*procs: subprocess.Popen, timeout: float = 150.0) -> None:
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{proc.args} did not finish")


def cleanup(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_learner_kill_9_and_restart_loses_no_acked_transition(tmp_path):
    config, run, arm = write_config(tmp_path / "exp.yaml"), tmp_path / "run", tmp_path / "arm"
    learner = start_learner(config, run)
    procs = [learner]
    try:
        wait_for(lambda: (run / "learner_address.txt").exists(), "the learner to bind", procs=procs)
        address = (run / "learner_address.txt").read_text().strip()
        actor = start_actor(config, address, arm)
        procs.append(actor)
        wait_for(lambda: checkpoints(run) and checkpoints(run)[-1] >= 150, "a learner checkpoint", procs=procs)
        wait_for(lambda: logged_after_checkpoint(run) >= 20, "acks past the checkpoint (the log must be replayed)",
                 procs=procs)
        learner.send_signal(signal.SIGKILL)
        learner.wait()
        acked_before_kill = json.loads((arm / "actor_state.json").read_text())["acked"]
        assert not (run / "metrics.json").exists(), "the kill must land mid-run"

        time.sleep(1.5)  # the actor keeps acting alone (up to max_unacked) and times out on its acks
        restarted = start_learner(config, run, bind=address)
        procs.append(restarted)
        finish(restarted, actor)
    finally:
        cleanup(*procs)

    log = (tmp_path / "learner.log").read_text()
    replayed = re.search(r"resuming .* \+ (\d+) logged transitions", log)
    assert replayed and int(replayed.group(1)) >= 20, log[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == STEPS and metrics["acked"] == {"arm": STEPS}
    assert metrics["acked"]["arm"] >= acked_before_kill
    buffer = online_buffer(run)
    assert len(buffer["actions"]) == STEPS
    assert chain_breaks(buffer) == 0, "a transition was lost or stored twice across the learner restart"
    assert metrics["updates"] == STEPS - 100 + 1, "updates follow the local loop's budget after a resume too"


def test_actor_keeps_acting_while_learner_stalls_and_resends_after_kill_9(tmp_path):
    config, run, arm = write_config(tmp_path / "exp.yaml"), tmp_path / "run", tmp_path / "arm"
    learner = start_learner(config, run)
    procs = [learner]
    try:
        wait_for(lambda: (run / "learner_address.txt").exists(), "the learner to bind", procs=procs)
        actor = start_actor(config, (run / "learner_address.txt").read_text().strip(), arm)
        procs.append(actor)
        wait_for(lambda: checkpoints(run) and checkpoints(run)[-1] >= 150, "a learner checkpoint", procs=procs)
        learner.send_signal(signal.SIGSTOP)  # a stalled learner: alive, silent
        try:
            # the actor goes on acting and spooling until max_unacked (40) steps wait for an ack
            wait_for(lambda: spooled_unacked(arm) >= 40, "the actor to fill its window", timeout=60, procs=[actor])
            actor.send_signal(signal.SIGKILL)
            actor.wait()
            waiting = spooled_unacked(arm)
            last = [transport.read_message(f)["t"] for _, f in transport.read_records(arm / "spool")][-1]
            cut_episode = not (last["terminated"][-1] or last["truncated"][-1])
        finally:
            learner.send_signal(signal.SIGCONT)
        assert waiting >= 40
        actor = start_actor(config, (run / "learner_address.txt").read_text().strip(), arm)
        procs.append(actor)
        finish(learner, actor)
    finally:
        cleanup(*procs)

    assert "to re-send" in (tmp_path / "actor.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == STEPS and metrics["acked"] == {"arm": STEPS}
    buffer = online_buffer(run)
    assert len(buffer["actions"]) == STEPS
    # the episode the killed actor was in never finished (unless it died right after its last step); the
    # restarted actor began a new one: one break there, none from loss or duplicates
    assert chain_breaks(buffer) == int(cut_episode)


def test_train_distributed_runs_two_actors_and_publishes_weights(tmp_path, curve_keys):
    """Over CurveZMQ, as across machines: transitions and weights travel only between key-holders."""
    from hilrl.runtime.train import train

    raw = yaml.safe_load(write_config(
        tmp_path / "exp.yaml", actors=2, bind="tcp://127.0.0.1:*", publish_every=20,
        learner_secret_key=str(curve_keys.server_secret), allow_keys=str(curve_keys.allowed),
        actor_secret_key=str(curve_keys.client_secret), learner_public_key=str(curve_keys.server_public)).read_text())
    raw["train"]["steps"] = 600  # paced by the learner's updates: long enough for the second actor to start
    result = train(validate_config(raw), tmp_path / "run", show_progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["env_steps"] == 600 and sum(metrics["acked"].values()) == 600
    assert set(metrics["acked"]) == {"actor0", "actor1"} and min(metrics["acked"].values()) > 0
    assert metrics["weights_version"] >= (600 - 100 + 1) // 20
    states = [json.loads((tmp_path / "run" / "actors" / a / "actor_state.json").read_text()) for a in ("actor0", "actor1")]
    assert all(s["weights_version"] > 0 for s in states), "each actor swapped in weights the learner published"
    assert 0.0 <= result.success_rate <= 1.0


def test_a_paced_learner_keeps_its_actors_within_a_batch_of_its_updates(tmp_path):
    """max_update_ratio 1: as the local loop, a stored step is followed by its update before many more are
    stored, even when updates are slow (utd 8 here) and two actors could collect far faster. Each checkpoint's
    counters say how far storing ran ahead of updating. Before the learner held its actors (a paced ack) instead
    of taking a batch every half second, storing ran ahead by hundreds of steps (reach_ray.yaml: ~750 updates
    done when its 3000th step was stored)."""
    import torch

    from hilrl.runtime.distributed.learner import PACED_DRAIN
    from hilrl.runtime.train import train

    raw = yaml.safe_load(write_config(tmp_path / "exp.yaml", actors=2, bind="tcp://127.0.0.1:*", max_unacked=10,
                                      max_update_ratio=1.0).read_text())
    raw["algo"].update(hidden=[256, 256], batch_size=256, utd=8)
    raw["train"].update(steps=300, checkpoint_every=25)
    train(validate_config(raw), tmp_path / "run", show_progress=False)
    lags = []
    for step in checkpoints(tmp_path / "run"):
        counters = torch.load(tmp_path / "run" / "checkpoints" / f"step_{step}.pt", map_location="cpu",
                              weights_only=False)["counters"]
        if counters["env_steps"] > raw["train"]["learning_starts"]:
            lags.append(counters["env_steps"] - raw["train"]["learning_starts"] + 1 - counters["updates"])
    assert len(lags) >= 4, lags
    # a serve round takes about PACED_DRAIN steps, plus at most the rest of one actor's batch
    assert max(lags) <= PACED_DRAIN + 10, f"stored steps ran ahead of updates by {lags}"


@contextmanager
def learner_and_raw_dealer(tmp_path):
    """A learner served by hand (``learner._serve``) and a bare DEALER speaking to it, closed afterwards."""
    from hilrl.runtime.distributed.learner import Learner

    raw = yaml.safe_load(write_config(tmp_path / "exp.yaml").read_text())
    raw["demos"]["episodes"] = 0
    learner = Learner(validate_config(raw), tmp_path / "run", bind="tcp://127.0.0.1:*", show_progress=False)
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvtimeo = 5000
    try:
        dealer.connect(learner.address)
        yield learner, dealer
    finally:
        dealer.close(linger=0)
        learner.close()


def test_learner_rejects_a_malformed_transition_with_a_clear_error(tmp_path):
    with learner_and_raw_dealer(tmp_path) as (learner, dealer):
        obs = {k: np.zeros(s.shape, s.dtype) for k, s in learner.obs_space.spaces.items()}
        bad = {"obs": obs, "action": np.full(learner.act_space.shape, np.nan, np.float32), "reward": 0.0,
               "next_obs": obs, "terminated": False, "truncated": False, "intervened": False,
               "intervention_start": False, "policy_action": np.zeros(learner.act_space.shape, np.float32),
               "is_success": False, "episode_start": True}
        dealer.send_multipart(encode(transport.transition_message("arm", 1, bad)))
        learner._serve(5000)
        reply = transport.read_message(dealer.recv_multipart())
        assert reply["kind"] == "error" and "t.action holds NaN" in reply["error"]
        assert learner.counters["env_steps"] == 0 and len(learner.online) == 0

        good = {**bad, "action": np.zeros(learner.act_space.shape, np.float32)}
        for seq in (1, 1, 3, 2):  # a duplicate and a gap are dropped; the ack says where to resume
            dealer.send_multipart(encode(transport.transition_message("arm", seq, good)))
        acks = []
        while len(acks) < 1 or acks[-1]["acked"] < 2:
            learner._serve(5000)
            acks.append(transport.read_message(dealer.recv_multipart()))
        assert learner.acked == {"arm": 2} and len(learner.online) == 2
        assert any(a["gap"] for a in acks)


def test_record_log_stops_at_a_torn_last_record(tmp_path):
    log = transport.RecordLog(tmp_path / "log")
    for seq in (1, 2, 3):
        log.append(encode(transport.transition_message("arm", seq, {"x": np.arange(600, dtype=np.float32)})))
    log.close()
    segment = next((tmp_path / "log").glob("seg_*.log"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-100])  # the writer died inside the third record
    reader = transport.RecordLog(tmp_path / "log")
    seqs = [transport.read_message(frames)["seq"] for _, frames in reader.read()]
    reader.close()
    assert seqs == [1, 2]
    assert (reader.segment == 1) and len(list((tmp_path / "log").glob("seg_*.log"))) == 2


def test_record_log_recycles_dropped_segments_without_reading_their_old_records(tmp_path):
    def record(seq, size=600):
        return encode(transport.transition_message("arm", seq, {"x": np.arange(size, dtype=np.float32)}))

    log = transport.RecordLog(tmp_path / "log", segment_bytes=10_000, keep_free=1)
    segments = [log.append(record(seq)) for seq in range(1, 7)]  # ~2.5 kB each: 3 per segment
    assert segments == [0, 0, 0, 1, 1, 1]
    log.rotate()
    log.drop_before(2)  # segment 0 is kept for reuse, segment 1 deleted
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["free_000000.log", "seg_000002.log"]
    log.rotate()  # segment 3 takes over free_000000.log, with its three old records still in the file
    assert not list((tmp_path / "log").glob("free_*")) and log.append(record(7, size=10)) == 3
    log.sync()  # what a kill -9 leaves: the new short record, then the old bytes
    assert [transport.read_message(f)["seq"] for _, f in transport.read_records(tmp_path / "log")] == [7]
    log.close()
    assert [transport.read_message(f)["seq"] for _, f in transport.read_records(tmp_path / "log")] == [7]
    # A writer killed with free files left: the next one reuses them under a new index.
    log = transport.RecordLog(tmp_path / "log", keep_free=2)
    log.drop_before(log.segment)
    log._file.close()
    assert sorted(p.name for p in (tmp_path / "log").glob("free_*")) == ["free_000002.log", "free_000003.log"]
    log = transport.RecordLog(tmp_path / "log")
    assert log.segment == 5 and len(list((tmp_path / "log").glob("free_*"))) == 1
    log.append(record(8))
    log.close()
    assert [transport.read_message(f)["seq"] for _, f in transport.read_records(tmp_path / "log")] == [8]


def test_record_log_checks_what_a_crash_can_leave(tmp_path):
    """A killed process leaves a short tail (caught by length); a power cut may leave zeros or stale
    bytes, which the head CRC catches in any log and the body CRC catches in an fsync log."""
    def write(folder, fsync):
        log = transport.RecordLog(folder, fsync=fsync)
        for seq in (1, 2, 3):
            log.append(encode(transport.transition_message("arm", seq, {"x": np.arange(600, dtype=np.float32)})))
        log.close()
        return next(folder.glob("seg_*.log"))

    def seqs(folder):
        return [transport.read_message(frames)["seq"] for _, frames in transport.read_records(folder)]

    for fsync in (False, True):
        segment = write(tmp_path / f"zeros{fsync}", fsync)
        data = segment.read_bytes()
        segment.write_bytes(data[:-2000] + bytes(2000))  # the third record's array is zeros
        assert seqs(segment.parent) == [1, 2] if fsync else len(seqs(segment.parent)) in (2, 3)
    segment = write(tmp_path / "stale", fsync=True)
    data = bytearray(segment.read_bytes())
    data[-10] ^= 0xFF  # one wrong byte inside the last record's array
    segment.write_bytes(bytes(data))
    assert seqs(segment.parent) == [1, 2]
    segment.write_bytes(b"")  # a writer killed before its first byte
    assert seqs(segment.parent) == []
    (tmp_path / "old" / "seg_000000.log").parent.mkdir()
    (tmp_path / "old" / "seg_000000.log").write_bytes(b"\x00" * 64)
    with pytest.raises(transport.HilrlError, match="not a log of this hilrl version"):
        seqs(tmp_path / "old")


def test_check_transitions_names_the_bad_field():
    import gymnasium as gym

    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (3,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    t = {"obs": {"state": np.zeros(3, np.float32)}, "action": np.zeros(4, np.float32), "reward": 0.0,
         "next_obs": {"state": np.zeros(2, np.float32)}, "terminated": False, "truncated": False,
         "intervened": False, "intervention_start": False, "policy_action": np.zeros(4, np.float32),
         "is_success": False, "episode_start": False}
    with pytest.raises(transport.ProtocolError, match=r"t.next_obs.state must be an array of shape \(1, 3\)"):
        transport.check_transitions(transport.transition_message("arm", 1, t), obs_space, act_space)
    with pytest.raises(transport.ProtocolError, match="'seq' must be an int >= 1"):
        transport.check_transitions(transport.transition_message("arm", 0, t), obs_space, act_space)
    good = transport.transitions_message("arm", 1, transport.stack_steps(
        [{**t, "next_obs": {"state": np.zeros(3, np.float32)}}] * 3))
    assert transport.check_transitions(good, obs_space, act_space) == 3
    good["t"]["truncated"] = good["t"]["truncated"][:2]
    with pytest.raises(transport.ProtocolError, match=r"t.truncated must be a bool array of shape \(3,\)"):
        transport.check_transitions(good, obs_space, act_space)
    good["t"]["truncated"] = np.zeros(3, bool)
    good["t"]["own_next"] = np.array([True, True, False])
    with pytest.raises(transport.ProtocolError, match="t.own_next must be .* true at least for the last step"):
        transport.check_transitions(good, obs_space, act_space)
    good["t"]["own_next"] = np.array([False, True, True])
    with pytest.raises(transport.ProtocolError, match=r"t.next_obs.state must be an array of shape \(2, 3\)"):
        transport.check_transitions(good, obs_space, act_space)


def test_next_obs_travels_only_where_it_is_not_the_next_steps_obs_and_is_stored_so():
    import gymnasium as gym

    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-10, 10, (2,), np.float32),
                                 "image": gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)})
    act_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    rng = np.random.default_rng(0)
    observations = [{"state": rng.normal(size=2).astype(np.float32),
                     "image": rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)} for _ in range(9)]
    # two episodes: 0 -> 1 -> 2 -> 3 (ends at 4), then 5 -> 6 -> 7 -> (8, not yet the next step's obs)
    chain = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8)]
    steps = [dict(obs=observations[a], action=np.zeros(1, np.float32), reward=float(i),
                  next_obs=observations[b], terminated=a == 3, truncated=False, intervened=False,
                  intervention_start=False, policy_action=np.zeros(1, np.float32), is_success=False,
                  episode_start=a in (0, 5)) for i, (a, b) in enumerate(chain)]
    message = transport.transitions_message("arm", 1, transport.stack_steps(steps))
    t = message["t"]
    assert t["own_next"].tolist() == [False, False, False, True, False, False, True]
    assert t["next_obs"]["image"].shape == (2, 4, 4, 3)
    decoded = transport.read_message(encode(message))  # as the learner gets it: read-only views of the frames
    assert transport.check_transitions(decoded, obs_space, act_space) == 7
    t = decoded["t"]
    expected = {key: np.stack([observations[b][key] for _, b in chain]) for key in ("state", "image")}

    def stored_next_obs(capacity, parts):
        """next_obs of every slot of a ring fed slices of the batch in the shared form, as the learner feeds it."""
        ring = ReplayBuffer(obs_space, act_space, capacity)
        for rows in parts:
            next_obs, own = slice_shared(t["obs"], t["next_obs"], t["own_next"], rows)
            ring.extend({k: v[rows] for k, v in t["obs"].items()}, t["action"][rows], t["reward"][rows], next_obs,
                        t["terminated"][rows], t["truncated"][rows], own_next=own)
        batch = ring.gather(np.arange(len(ring)))
        return batch["rewards"].astype(int), batch["next_obs"]

    for capacity, parts in ((10, [slice(0, 7)]), (10, [slice(0, 2), slice(2, 5), slice(5, 7)]),
                            (4, [slice(0, 3), slice(3, 6), slice(6, 7)]),  # wraps the ring twice
                            (3, [slice(0, 7)])):  # more steps than slots in one call
        rewards, next_obs = stored_next_obs(capacity, parts)
        order = np.argsort(rewards)  # rewards are the step indices
        for key in ("state", "image"):
            np.testing.assert_array_equal(next_obs[key][order], expected[key][np.sort(rewards)])
    rows = shared_next_rows(t["obs"], t["next_obs"], t["own_next"], np.array([6, 0, 3, 4]))
    for key in ("state", "image"):
        np.testing.assert_array_equal(rows[key], expected[key][[6, 0, 3, 4]])


def test_actor_and_learner_processes_learn_reach(tmp_path):
    """`hilrl train` with runtime: distributed (a learner and an actor process on loopback) learns Reach.

    Short (1500 steps): standardised observations (algo.normalisation.enabled) and fresh weights every 10
    updates with at most 20 steps in flight make it learn fast. Measured on 2 shared, busy cores:
    the untrained policy 5% success / mean return -8.4; after 1500 steps 50% / -1.2 in 85 s
    (with publish_every 50 and max_unacked 100 instead: 15% / -2.5). The untrained policy is the
    same network at the same seed, evaluated on the same 20 seeded episodes.
    """
    import torch

    from hilrl.envs.make import make_env
    from hilrl.policies.registry import make_algorithm
    from hilrl.runtime.evaluate import evaluate_policy

    raw = {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 10},
        "algo": {"name": "sac", "utd": 4, "gamma": 0.9, "init_temperature": 0.01, "normalisation": {"enabled": True},
                 "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": 1500, "learning_starts": 200, "eval_episodes": 20, "checkpoint_every": 1000,
                  "video": False},
        "runtime": {"mode": "distributed", "bind": "tcp://127.0.0.1:*", "actors": 1, "publish_every": 10,
                    "max_update_ratio": 1.0, "max_unacked": 20},
    }
    config_path = tmp_path / "reach.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(config_path), "--out", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 1500 and metrics["acked"] == {"actor0": 1500} and metrics["weights_version"] > 0

    torch.set_num_threads(1)
    config = validate_config(raw)
    env = make_env(config.env)
    untrained = make_algorithm(config.algo, env.observation_space, env.action_space, seed=config.train.seed)
    env.close()
    before = evaluate_policy(config.env, lambda o: untrained.act(o, deterministic=True), 20, show_progress=False)
    assert metrics["mean_return"] > before.mean_return + 3.0, (before, metrics)
    assert metrics["success_rate"] > before.success_rate, (before, metrics)


@pytest.mark.slow
def test_hilrl_train_distributed_learns_reach(tmp_path):
    """The shipped config end to end (learner + 2 actor processes). Measured once: 100% eval success (20 episodes)
    at 5000 steps, 236 s on 2 busy shared cores (45% before algo.normalisation and publish_every 10 / max_unacked
    20)."""
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", "sim_configs/reach_distributed.yaml", "--out",
                           str(run)], capture_output=True, text=True, timeout=1800,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 5000 and set(metrics["acked"]) == {"actor0", "actor1"}
    assert metrics["success_rate"] >= 0.7, "the actors' policy must learn to reach (100% measured once with this config)"


def _in_process_pair(tmp_path, actor_env=None, capacity=None, **env):
    """A Learner and an Actor in this process (Reach, state only unless ``actor_env`` says), linked over loopback."""
    import torch

    from hilrl.runtime.distributed.actor import Actor
    from hilrl.runtime.distributed.learner import Learner

    torch.set_num_threads(1)
    raw = yaml.safe_load(write_config(tmp_path / "exp.yaml", max_unacked=1000).read_text())
    raw["demos"]["episodes"] = 0
    raw["env"].update(env)
    if capacity:
        raw["train"]["buffer_capacity"] = capacity
    learner = Learner(validate_config(raw), tmp_path / "run", bind="tcp://127.0.0.1:*", show_progress=False)
    actor_raw = {**raw, "env": actor_env or {"id": "hilrl/Reach-v0"}}
    actor = Actor(validate_config(actor_raw), tmp_path / "arm", learner.address, actor_id="arm")
    return learner, actor


def test_a_burst_of_transitions_travels_as_a_few_batches_in_order(tmp_path):
    learner, actor = _in_process_pair(tmp_path)
    try:
        obs, _ = actor.env.reset(seed=0)
        action = np.zeros(actor.act_space.shape, np.float32)
        burst = 150
        for i in range(burst):  # taken while the learner serves nobody: they pile up at the actor
            next_obs = actor.env.step(action)[0]
            actor._take(dict(obs=obs, action=action, reward=float(i), next_obs=next_obs, terminated=False,
                             truncated=False, intervened=False, intervention_start=False, policy_action=action,
                             is_success=False, episode_start=i == 0))
            obs = next_obs
        deadline = time.monotonic() + 30
        while learner.acked.get("arm", 0) < burst or actor.state["acked"] < burst:
            assert time.monotonic() < deadline, f"acked {learner.acked}, actor {actor.state['acked']}"
            actor._service_link()
            learner._serve(20)
        records = [transport.read_message(frames) for _, frames in transport.read_records(tmp_path / "run" / "log")]
        assert len(records) <= 5, f"{burst} steps should travel as a few batches, got {len(records)} messages"
        assert [r["seq"] for r in records] == list(np.cumsum([1] + [len(r["t"]["reward"]) for r in records])[:-1])
        assert learner.counters["env_steps"] == burst and learner.counters["dropped"] == 0
        np.testing.assert_array_equal(learner.online.rewards[:burst], np.arange(burst, dtype=np.float32))
        assert ring_chain_breaks(learner.online, burst) == 0
    finally:
        actor.close()
        learner.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/mincore are Linux calls")
def test_learner_pages_its_image_ring_in_ahead_of_what_actors_send(tmp_path):
    from hilrl.data.paging import resident_fraction

    camera = {"id": "hilrl/Reach-v0", "cameras": ["front"], "image_size": 64}  # 12 KiB per image
    # 30000 slots: the learner's 256 MiB window (21845 images) plus room to see where it ends
    learner, actor = _in_process_pair(tmp_path, actor_env=camera, capacity=30000, cameras=["front"], image_size=64)
    try:
        pager, front = learner.pager, learner.online.obs["front"]
        if not pager.active:
            pytest.skip(pager.refused or "this kernel does not populate pages on request")
        assert pager.wait(10)
        window = pager.window_rows
        assert window + 300 + 400 < 30000
        assert resident_fraction(front, slice(0, window)) == 1.0  # paged in before any actor spoke
        assert resident_fraction(front, slice(window + 400, 30000)) < 0.1  # and no further

        obs, _ = actor.env.reset(seed=0)
        action = np.zeros(actor.act_space.shape, np.float32)
        steps = 300
        for i in range(steps):
            next_obs = actor.env.step(action)[0]
            actor._take(dict(obs=obs, action=action, reward=0.0, next_obs=next_obs, terminated=False,
                             truncated=False, intervened=False, intervention_start=False, policy_action=action,
                             is_success=False, episode_start=i == 0))
            obs = next_obs
            actor._service_link()
            learner._serve(0)
        deadline = time.monotonic() + 30
        while learner.acked.get("arm", 0) < steps:
            assert time.monotonic() < deadline, f"acked {learner.acked}"
            actor._service_link()
            learner._serve(20)
        assert pager.wait(10)
        assert resident_fraction(front, slice(steps, steps + window)) == 1.0  # the window moved with the head
        assert ring_chain_breaks(learner.online, steps) == 0
    finally:
        actor.close()
        learner.close()
    assert not pager.active


@pytest.mark.parametrize("rlif", [False, True])
def test_transition_storage_extend_stores_what_add_stores(rlif):
    import gymnasium as gym

    from hilrl.data.buffers import Replay, ReplayBuffer
    from hilrl.feedback.rewards import RLIFReward
    from hilrl.runtime.steps import TransitionStorage

    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (2,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    rng = np.random.default_rng(0)
    n = 300
    steps = {"obs": {"state": rng.normal(size=(n, 2)).astype(np.float32)}, "action": rng.normal(size=(n, 2)).astype(np.float32),
             "reward": rng.normal(size=n), "terminated": rng.random(n) < 0.05, "truncated": rng.random(n) < 0.05,
             "intervened": rng.random(n) < 0.3, "policy_action": rng.normal(size=(n, 2)).astype(np.float32)}
    _, episode_starts = rng.random(n) < 0.2, rng.random(n) < 0.05  # (the first draw keeps the random stream)
    # next_obs is the next step's obs except at episode ends and some other steps (the wire's own_next)
    own_next = steps["terminated"] | steps["truncated"] | (rng.random(n) < 0.1)
    own_next[-1] = True
    own_rows = rng.normal(size=(int(own_next.sum()), 2)).astype(np.float32)
    full_next = np.concatenate([steps["obs"]["state"][1:], own_rows[-1:]])
    full_next[own_next] = own_rows
    buffers = []
    for mode in ("add", "extend"):
        extras = {"intervened": ((), bool), "policy_action": ((2,), np.float32)}
        online, demo = ReplayBuffer(obs_space, act_space, 1000, extras=extras), ReplayBuffer(obs_space, act_space, 1000)
        replay = Replay(online, demo)
        replay.set_reward_source(RLIFReward() if rlif else None)  # RLIF's reward comes from the stored flags
        storage = TransitionStorage(replay, copy_interventions=not rlif)
        if mode == "add":
            for i in range(n):
                storage.add({"next_obs": {"state": full_next[i]},
                             **{k: ({kk: vv[i] for kk, vv in v.items()} if isinstance(v, dict) else v[i].item()
                                    if v.ndim == 1 else v[i]) for k, v in steps.items()}},
                            bool(episode_starts[i]))
        else:
            cuts = [0, 1, 2, 50, 51, 180, n]  # batches of many sizes, one of a single step
            for a, b in zip(cuts[:-1], cuts[1:]):
                rows = slice(a, b)
                batch = {k: ({kk: vv[rows] for kk, vv in v.items()} if isinstance(v, dict) else v[rows])
                         for k, v in steps.items()}
                batch["next_obs"], batch["own_next"] = slice_shared(steps["obs"], {"state": own_rows}, own_next, rows)
                storage.extend(batch, episode_starts[rows])
        buffers.append((online._arrays(), demo._arrays()))
    for stored_by_add, stored_by_extend in zip(*buffers):
        assert stored_by_add.keys() == stored_by_extend.keys()
        for key in stored_by_add:
            np.testing.assert_array_equal(stored_by_add[key], stored_by_extend[key], err_msg=key)
    assert len(buffers[0][0]["rewards"]) == n
    if rlif:
        assert (buffers[0][0]["rewards"] == -1).sum() > 10


def test_learner_refuses_an_actor_with_other_spaces(tmp_path):
    import gymnasium as gym

    with learner_and_raw_dealer(tmp_path) as (learner, dealer):
        other = gym.spaces.Box(-1, 1, (7,), np.float32)
        dealer.send_multipart(encode(transport.hello("arm", 0, learner.obs_space, other)))
        learner._serve(5000)
        reply = transport.read_message(dealer.recv_multipart())
        assert reply["kind"] == "error" and "action space" in reply["error"] and "same task" in reply["error"]
        dealer.send_multipart(encode(transport.hello("arm", 0, learner.obs_space, learner.act_space)))
        learner._serve(5000)
        assert transport.read_message(dealer.recv_multipart())["kind"] == "welcome"


def test_a_remote_arm_learner_builds_from_the_actors_hello_and_resumes_without_one(tmp_path):
    # env.remote points at no robot: the learner must never connect there, only take the actor's spaces
    learner, actor = _in_process_pair(tmp_path, remote="tcp://127.0.0.1:9")
    try:
        assert not learner.built
        deadline = time.monotonic() + 30
        while not (learner.built and actor.welcomed):
            assert time.monotonic() < deadline, "the actor's hello did not build the learner"
            actor._service_link()
            learner._serve(20)
        assert learner.obs_space == actor.env.observation_space and learner.act_space == actor.act_space
    finally:
        actor.close()
        learner.close()
    from hilrl.runtime.distributed.learner import Learner

    raw = yaml.safe_load((tmp_path / "exp.yaml").read_text())
    raw["demos"]["episodes"] = 0
    raw["env"]["remote"] = "tcp://127.0.0.1:9"
    again = Learner(validate_config(raw), tmp_path / "run", bind="tcp://127.0.0.1:*", show_progress=False)
    try:
        assert again.built and again.obs_space == actor.env.observation_space  # from RUN/spaces.msgpack
    finally:
        again.close()


def test_learner_with_curve_keys_serves_allowed_actors_only(tmp_path, curve_keys):
    """Off loopback a learner needs keys; with them, an actor whose key is allowed gets its welcome, a stranger nothing."""
    from hilrl.envs import auth
    from hilrl.errors import HilrlError
    from hilrl.runtime.distributed.learner import Learner

    raw = yaml.safe_load(write_config(tmp_path / "exp.yaml").read_text())
    raw["demos"]["episodes"] = 0

    with pytest.raises(HilrlError, match="off loopback: set runtime.learner_secret_key"):
        Learner(validate_config(raw), tmp_path / "open", bind="tcp://0.0.0.0:*", show_progress=False)

    raw["runtime"].update(learner_secret_key=str(curve_keys.server_secret), allow_keys=str(curve_keys.allowed))
    learner = Learner(validate_config(raw), tmp_path / "run", bind="tcp://127.0.0.1:*", show_progress=False)
    dealers = {}
    try:
        for name, secret in (("actor", curve_keys.client_secret), ("stranger", curve_keys.stranger_secret)):
            dealer = zmq.Context.instance().socket(zmq.DEALER)
            dealer.linger = 0
            dealer.sndtimeo = 2000  # a failed handshake can drop the only pipe first: the send would block
            auth.apply_client_keys(dealer, secret, curve_keys.server_public)
            dealer.connect(learner.address)
            dealers[name] = dealer
            try:
                dealer.send_multipart(encode(transport.hello(name, 0)))
            except zmq.Again:
                assert name == "stranger", "the allowed actor's hello could not be sent"
        replies = {}
        for _ in range(40):  # serve by hand for up to ~2 s
            learner._serve(50)
            for name, dealer in dealers.items():
                if name not in replies and dealer.poll(0):
                    replies[name] = transport.read_message(dealer.recv_multipart())
        assert replies["actor"]["kind"] == "welcome" and replies["actor"]["weights"]
        assert "stranger" not in replies  # the handshake failed: its hello never reached the learner
    finally:
        for dealer in dealers.values():
            dealer.close(linger=0)
        learner.close()


def test_hilrl_learner_refuses_a_run_folder_of_another_config(tmp_path):
    from hilrl.config import dump_config, load_config

    run = tmp_path / "run"
    (run / "log").mkdir(parents=True)  # a learner ran here: its log is resumed by the next start
    dump_config(load_config(write_config(tmp_path / "first.yaml")), run / "config.yaml")
    recorded = (run / "config.yaml").read_text()
    other = write_config(tmp_path / "other.yaml", max_unacked=80)
    done = subprocess.run([sys.executable, "-m", "hilrl.cli", "learner", str(other), "--out", str(run)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "runtime.max_unacked: 40 -> 80" in done.stdout + done.stderr
    assert (run / "config.yaml").read_text() == recorded
