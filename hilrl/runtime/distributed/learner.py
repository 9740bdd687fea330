"""The learner process: stores the transitions actors stream to it, trains SAC, publishes actor weights.

``hilrl learner CONFIG --bind tcp://HOST:PORT --out RUN`` (or ``hilrl train`` with ``runtime: distributed``,
which also starts the actors). Protocol in :mod:`hilrl.runtime.distributed.transport`. Per ``transitions`` message
(a batch of an actor's consecutive steps), in this order:

1. check it (schema, shapes, finite numbers; one numpy call per stacked field) against the task's spaces;
2. keep the steps after the actor's acked seq if the batch reaches back to it (duplicates are skipped,
   a batch after a gap is dropped);
3. append its wire frames to the log ``RUN/log/`` (one record per batch) and store the new steps in the
   replay buffers with the loops' storage rule (:class:`hilrl.runtime.steps.TransitionStorage`, one per
   actor), vectorised; a thread faults the online ring's image memory in just ahead of its head
   (:class:`hilrl.data.paging.PageAhead`), so the serve loop does not pay the kernel's first-touch zeroing;
4. after a round of messages (and an fsync of the log with ``runtime.fsync``), ack each actor's highest
   contiguous seq.

The task's spaces come from ``make_env`` (a sim env, built and closed), or, with ``env.remote`` set
(the arm is at the actors), from the first actor's ``hello``; they are saved as ``RUN/spaces.msgpack``
so a restarted learner resumes without an actor. An actor whose spaces differ is refused.

So an acked transition is on disk. A checkpoint (the run folder's one layout, :mod:`hilrl.runtime.run`:
``RUN/checkpoints/step_N.pt`` with its ``replay_*_N.npz``) holds the learner, buffers, per-actor acked
seqs and episode marks, and names the first log segment written after it; a restarted learner loads
the newest checkpoint and replays the log from there, so a ``kill -9`` loses nothing it acked. The
buffers' rewards come from the run's reward source, as in the local loop. Stopping rule:
``train.steps`` stored transitions, then updates up to the ``runtime.max_update_ratio`` budget, then
evaluation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import Replay, ReplayBuffer
from hilrl.data.paging import PageAhead
from hilrl.envs import auth
from hilrl.envs.make import make_env
from hilrl.envs.protocol import ProtocolError, decode, encode
from hilrl.envs.remote import _stream_address
from hilrl.errors import HilrlError
from hilrl.feedback.rewards import make_reward_source
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.distributed import transport
from hilrl.runtime.evaluate import EvalResult
from hilrl.runtime.progress import console, make_progress
from hilrl.runtime.run import RunFolder
from hilrl.runtime.seeds import Seeds
from hilrl.runtime.steps import TransitionStorage, fresh_counters, rows

DRAIN_TRANSITIONS = 256  # transitions stored between two log flushes / ack rounds (the last batch may pass it)
PACED_DRAIN = 16  # ... when pacing: small, so acks keep flowing well within the actors' ack_timeout_s
ROUTER_QUEUE_MESSAGES = 512
SPACES_FILE = "spaces.msgpack"
LOG_SEGMENT_BYTES = 64 * 1024 * 1024
LOG_FREE_SEGMENTS = 16  # the log between two checkpoints is recycled, up to 1 GiB of it (RecordLog)
PACED_SERVE_PERIOD_S = 0.5  # a paced learner serves at least this often, even behind on its updates


class Learner:
    """One learner serving any number of actors. Build it (binds the sockets), then :meth:`run`.

    Args:
        config: the experiment (an algorithm registered with ``distributed=True``: ``algo.name: sac``).
        out: run folder, or a :class:`~hilrl.runtime.run.RunFolder` already checked and recorded
            (:func:`run_learner`); a folder with a checkpoint or a log is resumed.
        bind: transition channel address (default ``config.runtime.bind``); ``tcp://HOST:*`` picks a port.
        demo_episodes: demos for the demo buffer of a fresh run.
    """

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike | RunFolder, bind: str | None = None,
                 demo_episodes: list | None = None, show_progress: bool = True) -> None:
        check_distributable(config)
        torch.set_num_threads(config.train.threads)
        self.config, self.show_progress = config, show_progress
        self.folder = out if isinstance(out, RunFolder) else RunFolder(config, out, record=False)
        self.out, self.ckpt_dir = self.folder.out, self.folder.ckpt_dir
        rc = config.runtime
        self.copy_interventions = config.intervention.learning_rule == "hil_serl"

        self.storage: dict[str, TransitionStorage] = {}
        self.acked: dict[str, int] = {}
        self.counters = fresh_counters("dropped", "rejected")
        self.recent_intervened: deque[bool] = deque(maxlen=500)
        self.weights_version = 0
        self.demo_episodes = demo_episodes or []
        self.obs_space: Any = None
        self.act_space: Any = None
        self.pager: PageAhead | None = None
        self.log = transport.RecordLog(self.out / "log", fsync=rc.fsync, segment_bytes=LOG_SEGMENT_BYTES,
                                       keep_free=LOG_FREE_SEGMENTS)
        self.last_checkpoint_steps = 0
        spaces_file = self.out / SPACES_FILE
        if config.env.remote is None:
            env = make_env(config.env)
            self._build(env.observation_space, env.action_space)
            env.close()
        elif spaces_file.is_file():
            self._build(*transport.hello_spaces(decode([spaces_file.read_bytes()])))
        # else: a remote arm; the first actor's hello brings the spaces (self._build then)

        self.context = zmq.Context.instance()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.rcvhwm = ROUTER_QUEUE_MESSAGES
        self.pub = self.context.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = 4  # a slow actor should get the newest weights, not a queue of old ones
        self.authenticator = None
        try:
            self._secure(bind or rc.bind)
            self.router.bind(bind or rc.bind)
            host = self.router.last_endpoint.decode().rpartition(":")[0]
            self.pub.bind(rc.weights_bind or f"{host}:*")
        except zmq.ZMQError as exc:
            self.close()
            raise HilrlError(f"cannot bind the learner to {bind or rc.bind} ({exc}); pick a free port with --bind "
                             "tcp://HOST:PORT (or tcp://HOST:* for any)") from None
        except HilrlError:
            self.close()
            raise
        self.address = self.router.last_endpoint.decode()
        self.weights_address = _stream_address(self.address, self.pub.last_endpoint.decode())
        (self.out / "learner_address.txt").write_text(self.address + "\n")

    def _secure(self, address: str) -> None:
        """CurveZMQ on both sockets when ``runtime.learner_secret_key`` is set; required off loopback, where
        anyone could otherwise send transitions or read the policy (as the robot server, PROTOCOL.md)."""
        rc = self.config.runtime
        loopback = auth.is_loopback(address) and (rc.weights_bind is None or auth.is_loopback(rc.weights_bind))
        if rc.learner_secret_key is None:
            if not loopback:
                raise HilrlError(f"the learner binds {address}, off loopback: set runtime.learner_secret_key and "
                                 "runtime.allow_keys (CurveZMQ keys from `hilrl keys generate`) so that only your "
                                 "actors can send transitions and receive the policy")
            return
        self.authenticator, allowed = auth.serve_curve(self.context, [self.router, self.pub], rc.learner_secret_key,
                                                       rc.allow_keys)
        console.print(f"learner: CurveZMQ on, {allowed} allowed actor key(s) in {rc.allow_keys}", soft_wrap=True)

    def _build(self, obs_space: Any, act_space: Any) -> None:
        """Networks and buffers for these spaces, then the resume from checkpoint + log."""
        tc = self.config.train
        self.obs_space, self.act_space = obs_space, act_space
        spaces_file = self.out / SPACES_FILE
        if not spaces_file.is_file():
            self.out.mkdir(parents=True, exist_ok=True)
            # one frame: arrays inline, so the file is the header alone
            (header,) = encode(transport.hello("learner", 0, obs_space, act_space), inline_array_bytes=2**62)
            tmp = spaces_file.with_name(SPACES_FILE + ".tmp")
            tmp.write_bytes(header)
            os.replace(tmp, spaces_file)
        self.agent = make_algorithm(self.config.algo, obs_space, act_space, seed=Seeds(tc.seed).network)
        self.replay = Replay.create(obs_space, act_space, tc.buffer_capacity)
        self.replay.set_reward_source(make_reward_source(self.config.reward_config))
        self._resume(self.demo_episodes)
        # the online ring's image memory is faulted in by a thread just ahead of where transitions land
        self.pager = PageAhead(self.online.obs.values())
        self.pager.advance(len(self.online))
        self.last_checkpoint_steps = self.counters["env_steps"]
        self.weights = self.agent.policy_weights()

    @property
    def built(self) -> bool:
        return self.obs_space is not None

    @property
    def online(self) -> ReplayBuffer:
        return self.replay.online

    @property
    def demo(self) -> ReplayBuffer:
        return self.replay.demo

    # ---------------------------------------------------------------- resume

    def _resume(self, demo_episodes: list) -> None:
        state = self.folder.resume(self.agent, self.replay)
        first_segment = 0
        if state is None:
            self.replay.add_demos(demo_episodes)
        else:
            self.counters.update(state["counters"])
            self.acked = dict(state["acked"])
            for actor, stream in state.get("streams", {}).items():  # (older checkpoints: none)
                self._storage_for(actor).load_state(stream)
            self.weights_version = int(state["weights_version"])
            first_segment = int(state["log_segment"])
        replayed = 0
        for _, frames in self.log.read(first_segment):
            message = transport.read_message(frames)  # we wrote it after checking it
            replayed += self._accept(message, frames=None)
        if state is not None or replayed:
            where = state["path"].name if state is not None else "an empty start"
            console.print(f"resuming {self.out} from {where} + {replayed} logged transitions: "
                          f"{self.counters['env_steps']} stored, {self.counters['updates']} updates, "
                          f"acked {self.acked}", soft_wrap=True)

    def _storage_for(self, actor: str) -> TransitionStorage:
        if actor not in self.storage:
            self.storage[actor] = TransitionStorage(self.replay, self.copy_interventions)
        return self.storage[actor]

    # ---------------------------------------------------------------- storing

    @property
    def done(self) -> bool:
        return self.counters["env_steps"] >= self.config.train.steps

    def _accept(self, message: dict[str, Any], frames: list[Any] | None) -> int:
        """Store the steps of a checked batch that follow its actor's acked seq; log ``frames`` first (live only).

        Returns how many steps were stored. A batch that starts after ``acked + 1`` (a gap) stores none.
        """
        actor, first, t = message["actor"], message["seq"], message["t"]
        n, acked = len(t["reward"]), self.acked.get(actor, 0)
        if self.done or first > acked + 1 or first + n - 1 <= acked:
            return 0
        skip = acked + 1 - first  # steps this learner already holds
        take = min(n - skip, self.config.train.steps - self.counters["env_steps"])
        if frames is not None:
            self.log.append(frames)
        # one image per step to the ring: next_obs stays in the shared form the wire brought (buffers.py)
        steps = rows(t, slice(skip, skip + take))
        self._storage_for(actor).extend(steps, steps["episode_start"])
        self.recent_intervened.extend(steps["intervened"].tolist())
        self.acked[actor] = acked + take
        c = self.counters
        ends = steps["terminated"] | steps["truncated"]
        c["env_steps"] += take
        c["interventions"] += int(steps["intervention_start"].sum())
        c["intervened_steps"] += int(steps["intervened"].sum())
        c["episodes"] += int(ends.sum())
        c["successes"] += int((ends & steps["is_success"]).sum())
        return take

    def _serve(self, timeout_ms: int, limit: int = DRAIN_TRANSITIONS) -> None:
        """Handle messages holding up to about ``limit`` transitions, flush the log, then ack every actor heard from."""
        if not self.router.poll(timeout_ms):
            return
        replies: dict[bytes, tuple[str, bool]] = {}
        handled = 0
        while handled < limit:
            try:
                identity, *frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            identity = identity.bytes
            try:
                message = transport.read_message(frames)
                if message["kind"] == "hello":
                    self._welcome(identity, message)
                    continue
                if message["kind"] != "transitions":
                    raise ProtocolError(f"an actor sends hello or transitions, not {message['kind']!r}")
                if not self.built:
                    raise ProtocolError("send hello with your observation and action spaces before transitions "
                                        "(this learner has no env of its own: env.remote is set)")
                stored_terms = self.online.reward_terms if len(self.online) else None
                n = transport.check_transitions(message, self.obs_space, self.act_space, stored_terms)
            except ProtocolError as exc:
                self.counters["rejected"] += 1
                self.router.send_multipart([identity, *encode(transport.error(str(exc)))])
                continue
            actor = message["actor"]
            stored = self._accept(message, frames)
            handled += n
            gap = not stored and not self.done and message["seq"] > self.acked.get(actor, 0) + 1
            self.counters["dropped"] += n - stored
            previous_gap = replies.get(identity, (actor, False))[1]
            replies[identity] = (actor, previous_gap or gap)
        self.log.sync()  # acked means written: every append is in the OS already; fsync it with runtime.fsync
        if self.pager is not None:
            self.pager.advance(len(self.online))
        for identity, (actor, gap) in replies.items():
            self.router.send_multipart([identity, *encode(transport.ack(self.acked.get(actor, 0), self.done, gap))])

    def _welcome(self, identity: bytes, message: dict[str, Any]) -> None:
        actor, their_acked = message.get("actor"), message.get("acked")
        if not isinstance(actor, str) or not actor or type(their_acked) is not int:
            raise ProtocolError("hello needs 'actor' (a non-empty string) and 'acked' (an int)")
        spaces = transport.hello_spaces(message)
        if spaces is None and not self.built:
            raise ProtocolError("hello must carry 'spaces' (observation and action): this learner has no env of "
                                "its own (env.remote is set); run an actor of the same hilrl version")
        if spaces is not None:
            if not self.built:
                console.print(f"learner: spaces from actor {actor} (env.remote is set)", soft_wrap=True)
                self._build(*spaces)
            for what, theirs, ours in (("observation", spaces[0], self.obs_space), ("action", spaces[1], self.act_space)):
                if theirs != ours:
                    raise ProtocolError(f"actor {actor!r} has {what} space {theirs}, but this learner trains on {ours}; "
                                        "run every actor with the learner's env config (same task, cameras, "
                                        "image size and obs keys)")
        if their_acked > self.acked.get(actor, 0):
            # This learner lost transitions it once acked (a run folder wiped or replaced): they are gone
            # from the actor too, so continue after them rather than wait forever for them.
            console.print(f"[yellow]actor {actor} was acked up to {their_acked}, this learner has "
                          f"{self.acked.get(actor, 0)}; continuing from {their_acked}[/yellow]")
            self.acked[actor] = their_acked
            self._storage_for(actor).episode = None  # the steps between are gone: the next step opens an episode
        self.router.send_multipart([identity, *encode(transport.welcome(
            self.acked.get(actor, 0), self.done, self.weights_address, self.weights_version, self.weights))],
            copy=False)

    # ---------------------------------------------------------------- checkpoints and weights

    def publish(self) -> None:
        self.weights_version += 1
        self.weights = self.agent.policy_weights()
        self.pub.send_multipart(encode(transport.weights_message(self.weights_version, self.weights)), copy=False)

    def checkpoint(self) -> Path:
        """Learner + buffers + acked seqs + each actor's episode marks; names the first log segment it does not
        contain (the run folder's checkpoint layout, :mod:`hilrl.runtime.run`)."""
        segment = self.log.rotate()
        tag = self.counters["env_steps"]
        path = self.folder.checkpoint(tag, self.agent, self.counters, self.replay, acked=dict(self.acked),
                                   streams={a: s.state() for a, s in self.storage.items()}, log_segment=segment,
                                   weights_version=self.weights_version)
        self.log.drop_before(segment)
        self.last_checkpoint_steps = tag
        return path

    # ---------------------------------------------------------------- main loop

    def update_budget(self) -> float:
        """Updates allowed now: as the local loop, one per stored transition after ``learning_starts``."""
        tc, ratio = self.config.train, self.config.runtime.max_update_ratio
        if self.counters["env_steps"] < tc.learning_starts or len(self.online) == 0:
            return 0
        if ratio is None:
            return float("inf") if not self.done else self.counters["updates"]
        return ratio * (self.counters["env_steps"] - tc.learning_starts + 1)

    def run(self) -> EvalResult | None:
        """Serve actors and train until ``train.steps`` transitions are stored and updated on; then evaluate."""
        tc, rc, c = self.config.train, self.config.runtime, self.counters
        metrics: dict[str, Any] = {}
        started, start_updates, next_log = time.perf_counter(), c["updates"], c["env_steps"] + tc.log_every
        last_serve = time.monotonic()
        console.print(f"learner on {self.address} (weights on {self.weights_address}), run folder {self.out}",
                      soft_wrap=True)
        with make_progress(not self.show_progress) as bar:
            task = bar.add_task(f"learner {self.config.env.id}", total=tc.steps, completed=c["env_steps"], stats="")
            while not self.built:  # env.remote: waiting for the first actor's hello
                self._serve(100)
            while True:
                can_update = c["updates"] < self.update_budget()
                # Paced (max_update_ratio set): take new transitions only once their updates are done, a few
                # at a time, so the actors' un-acked window (runtime.max_unacked) bounds their policy's lag.
                paced = rc.max_update_ratio is not None and c["env_steps"] >= tc.learning_starts
                # ... but never silent for long: late acks make actors time out and re-send their whole window
                overdue = time.monotonic() - last_serve > PACED_SERVE_PERIOD_S
                if not (paced and can_update) or overdue:
                    self._serve(0 if can_update else 20, PACED_DRAIN if paced else DRAIN_TRANSITIONS)
                    last_serve = time.monotonic()
                if can_update:
                    metrics = self.agent.update(self.replay)
                    c["updates"] += 1
                    if c["updates"] % rc.publish_every == 0:
                        self.publish()
                if c["env_steps"] - self.last_checkpoint_steps >= tc.checkpoint_every:
                    self.checkpoint()
                if c["env_steps"] >= next_log or (self.done and not can_update):
                    next_log = c["env_steps"] + tc.log_every
                    rate = (c["updates"] - start_updates) / max(time.perf_counter() - started, 1e-9)
                    intervened = float(np.mean(self.recent_intervened)) if self.recent_intervened else 0.0
                    self.folder.scalars(c["env_steps"], metrics, "train/")
                    self.folder.scalars(c["env_steps"], {"intervention_rate": intervened}, "rollout/")
                    bar.update(task, completed=c["env_steps"], stats=f"intervened {intervened:.0%}  {c['updates']} "
                                                                     f"updates ({rate:.0f}/s)  actors {dict(self.acked)}")
                if self.done and c["updates"] >= self.update_budget():
                    break
            self.publish()
            self.checkpoint()
            self._serve(0)  # tell waiting actors the run is done
        train_seconds = time.perf_counter() - started
        # evaluating on a real arm is the user's call, not the learner's
        return self.folder.finish(self.agent, self.ckpt_dir / f"step_{c['env_steps']}.pt", c, tc.steps,
                               self.show_progress, evaluate=self.config.env.remote is None, runtime="distributed",
                               acked=dict(self.acked), weights_version=self.weights_version,
                               reward=repr(self.online.reward_source),
                               train_seconds_this_session=round(train_seconds, 2))

    def close(self) -> None:
        if self.pager is not None:
            self.pager.close()
        self.log.close()
        self.router.close(linger=0)
        self.pub.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def run_learner(config: ExperimentConfig, out: str | os.PathLike, bind: str | None = None,
                show_progress: bool = True) -> EvalResult | None:
    """`hilrl learner`: the run folder gets config, demos, log, checkpoints, scalars and metrics.json."""
    check_distributable(config)
    run = RunFolder(config, out)
    _prepare_reference(config, show_progress)
    episodes = run.demo_episodes(show_progress)
    learner = Learner(config, run, bind=bind, demo_episodes=episodes, show_progress=show_progress)
    try:
        return learner.run()
    finally:
        learner.close()


def check_distributable(config: ExperimentConfig) -> None:
    """Refuse an algorithm that cannot run as a learner fed by actors (the config does it for runtime: distributed)."""
    from hilrl.policies.registry import algorithm_names, algorithm_spec

    if not algorithm_spec(config.algo.name).distributed:
        raise HilrlError(f"algo.name {config.algo.name!r} does not run as a learner fed by actors; the ones that do: "
                         f"{', '.join(algorithm_names(distributed=True))}")


def _prepare_reference(config: ExperimentConfig, show_progress: bool) -> None:
    """Build a missing ``intervention.q_ref`` here, once, before any actor needs it (each would build it)."""
    ic = config.intervention
    if ic.source == "value":
        from hilrl.runtime.reference import ensure_reference_critic

        ensure_reference_critic(ic.q_ref, config.env.id, ic.q_ref_steps, seed=0, show_progress=show_progress)


def train_distributed(config: ExperimentConfig, run: RunFolder, demo_episodes: list,
                      show_progress: bool = True) -> EvalResult:
    """`hilrl train` with ``runtime: distributed``: this process is the learner; ``runtime.actors`` actor
    processes (``hilrl actor``) run beside it with folders ``OUT/actors/actorI``."""
    out = run.out
    _prepare_reference(config, show_progress)
    learner = Learner(config, run, demo_episodes=demo_episodes, show_progress=show_progress)
    actors: list[subprocess.Popen] = []
    try:
        for index in range(config.runtime.actors):
            actors.append(subprocess.Popen([
                sys.executable, "-m", "hilrl.cli", "actor", str(out / "config.yaml"), "--learner", learner.address,
                "--out", str(out / "actors" / f"actor{index}"), "--id", f"actor{index}", "--index", str(index),
                "--quiet"]))
        result = learner.run()
    finally:
        learner.close()
        for actor in actors:
            if actor.poll() is None:
                actor.send_signal(signal.SIGTERM)  # it saves its spool state and exits
        for actor in actors:
            try:
                actor.wait(30)
            except subprocess.TimeoutExpired:
                actor.kill()
                actor.wait()
    if result is None:
        raise HilrlError("the distributed run stored its transitions but did not evaluate (env.remote is set)")
    return result
