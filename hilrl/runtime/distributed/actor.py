"""The actor process: acts in the env (next to the robot), streams transitions, swaps in new weights.

``hilrl actor CONFIG --learner tcp://HOST:PORT --out ACTOR_DIR``. Each env step is one transition
with the executed action and the intervention marks. Steps travel in ``transitions`` messages
(:mod:`hilrl.runtime.distributed.transport`) of up to ``BATCH_MAX_TRANSITIONS`` consecutive steps, and a batch
is encoded once: the same frames are appended to the spool ``ACTOR_DIR/spool/`` (one ``writev``, also
fsynced with ``runtime.fsync``), kept in memory until the learner acks them, sent, and re-sent after a
silence of ``runtime.ack_timeout_s`` or when the learner reports a gap.

A batch is closed with the steps taken so far as soon as fewer than ``MAX_IN_FLIGHT_BATCHES``
batches wait for an ack and it spans ``BATCH_MIN_SPAN_S`` of steps at the actor's recent step rate, a full
batch is ready, or its oldest step is ``BATCH_MAX_DELAY_S`` old. So a slow robot's steps go one by one with
no added delay, a fast simulator's go a few at a time even to a learner that acks at once (one message and
one ack per step cost the two processes more than the step itself), a fast producer's steps pile up into
big batches while the learner works on the previous ones, and a step is on disk within
``BATCH_MAX_DELAY_S`` of being taken (an actor killed -9 loses at most that much; never an acked step).
So the actor:

* keeps acting on its last weights while the learner is slow, gone or restarting (the ZMQ
  socket reconnects by itself), pausing only when ``runtime.max_unacked`` steps wait for an ack;
* resumes after a crash from its spool (un-acked transitions), ``weights.npz`` and ``actor_state.json``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from hilrl.config import ExperimentConfig
from hilrl.envs import auth
from hilrl.envs.protocol import ProtocolError, encode
from hilrl.envs.remote import stream_address
from hilrl.errors import HilrlError
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.distributed import check_distributable, transport
from hilrl.runtime.progress import console
from hilrl.runtime.seeds import Seeds
from hilrl.runtime.steps import StepSource, cache_frame_features, fresh_counters, make_training_env

SPOOL_SEGMENT_BYTES = 16 * 1024 * 1024  # a spool file goes (to be recycled) once all of it is acked
SPOOL_FREE_SEGMENTS = 8  # recycled spool files: enough for a window of max_unacked image steps
BATCH_MAX_TRANSITIONS = 64
BATCH_MAX_BYTES = 8 * 1024 * 1024  # well under transport.MAX_MESSAGE_BYTES, whatever the cameras
MAX_IN_FLIGHT_BATCHES = 2  # two: the learner has the next batch queued while it stores one
BATCH_MIN_SPAN_S = 0.005  # ~5 steps of a 1000 steps/s simulator per batch; 1 step of anything slower than 200 Hz
STEP_RATE_SMOOTHING = 0.1  # weight of the newest step interval in the actor's running mean
BATCH_MAX_DELAY_S = 0.02
WEIGHTS_SAVE_PERIOD_S = 5.0
HELLO_RETRY_S = 0.5
STATE_SAVE_PERIOD_S = 0.5  # actor_state.json: a restart re-sends at most this much of acked transitions again


class Actor:
    """One actor. Build it (loads its folder, connects), then :meth:`run`.

    Args:
        config: the same experiment the learner runs.
        out: this actor's folder (spool, last weights, counters).
        learner: the learner's transition address, e.g. ``tcp://10.0.0.2:5560``.
        actor_id: unique name among the learner's actors; the learner keys seqs by it.
        index: seeds the env and the interventionist apart from other actors (stream ``index + 1`` of
            :mod:`hilrl.runtime.seeds`).
        steps: stop after this many env steps in this session (``None``: until the learner is done).
        device: an open teleop device for ``intervention.source: device`` (else the configured one is opened):
            a person beside the arm takes over as in ``hilrl train``.
    """

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike, learner: str, actor_id: str = "actor0",
                 index: int = 0, steps: int | None = None, device: Any = None) -> None:
        check_distributable(config)
        if not actor_id or not actor_id.isprintable():
            raise HilrlError(f"--id {actor_id!r}: give each actor a non-empty printable name")
        torch.set_num_threads(config.train.threads)
        self.config, self.actor_id, self.index, self.steps_limit = config, actor_id, index, steps
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seeds = Seeds(config.train.seed, stream=index + 1)
        self.env = make_training_env(config, self.seeds, device=device)
        self.act_space = self.env.action_space
        self.agent = make_algorithm(config.algo, self.env.observation_space, self.act_space, seed=self.seeds.acting)

        self.state = {"actor": actor_id, "acked": 0, "steps": 0, "episodes": 0, "successes": 0, "weights_version": -1}
        state_file = self.out / "actor_state.json"
        if state_file.is_file():
            saved = json.loads(state_file.read_text())
            if saved.get("actor") != actor_id:
                raise HilrlError(f"{self.out} belongs to actor {saved.get('actor')!r}, not {actor_id!r}; use its "
                                 "--id or another --out")
            self.state.update(saved)
        self.counters = fresh_counters()
        self.counters.update(env_steps=self.state["steps"], episodes=self.state["episodes"],
                             successes=self.state["successes"])
        # with a frozen pretrained image encoder the actor encodes each frame once and sends the features
        # (the hello carries the env's own space: the learner builds its algorithm on it)
        self.steps = StepSource(cache_frame_features(self.env, self.agent), self.agent.act, self.seeds,
                                self.counters, random_steps=config.train.random_steps)
        weights_file = self.out / "weights.npz"
        if weights_file.is_file():
            with np.load(weights_file) as f:
                self.agent.load_policy_weights({k: f[k] for k in f.files})
        self.spool = transport.RecordLog(self.out / "spool", fsync=config.runtime.fsync,
                                         segment_bytes=SPOOL_SEGMENT_BYTES, keep_free=SPOOL_FREE_SEGMENTS)
        # spooled batches with a step not yet acked: first seq -> (last seq, wire frames)
        self.batches: OrderedDict[int, tuple[int, list[Any]]] = OrderedDict()
        self.taken: list[dict[str, Any]] = []  # steps not yet in a batch (at most BATCH_MAX_DELAY_S old)
        self.taken_since = 0.0
        self.segment_last_seq: dict[int, int] = {}
        last = self.state["acked"]
        for segment, frames in self.spool.read():
            message = transport.read_message(frames)
            first = message["seq"]
            last = first + len(message["t"]["reward"]) - 1
            self.segment_last_seq[segment] = last
            if last > self.state["acked"]:
                self.batches[first] = (last, frames)
        self.next_seq = max(self.state["acked"], last) + 1
        if self.batches or self.state["steps"]:
            console.print(f"actor {actor_id} resuming: {self.state['steps']} steps, {self.unacked_steps()} "
                          "transitions to re-send", soft_wrap=True)

        self.context = zmq.Context.instance()
        self.learner = learner
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.immediate = True  # no queueing for a learner that is not there: the spool is the queue
        self.socket.sndhwm = config.runtime.max_unacked + 16
        self.sub = self.context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        if config.runtime.learner_public_key is not None:  # CurveZMQ: the learner must know our key
            for socket in (self.socket, self.sub):
                auth.apply_client_keys(socket, config.runtime.actor_secret_key, config.runtime.learner_public_key)
        try:
            self.socket.connect(learner)
        except zmq.ZMQError as exc:
            raise HilrlError(f"--learner {learner!r}: not a ZMQ address ({exc}); use tcp://HOST:PORT") from None
        self.weights_address: str | None = None
        self.sent_upto = self.state["acked"]
        self.in_flight: deque[int] = deque()  # last seq of each batch sent and not yet acked
        self.to_send: deque[int] = deque(self.batches)  # first seqs of batches to send, oldest first
        self.batch_max = BATCH_MAX_TRANSITIONS
        self.step_interval: float | None = None  # running mean of the seconds between two steps taken
        self.last_take = None
        self.last_progress = time.monotonic()
        self.last_hello = -float("inf")
        self.last_weights_save = time.monotonic()
        self.last_state_save = -float("inf")
        self.learner_done = False
        self.stop_requested = False
        self.welcomed = False  # set by the learner's welcome; cleared when it goes silent or restarts

    # ---------------------------------------------------------------- link

    def _hello(self, go_back: bool) -> None:
        self.last_hello = time.monotonic()
        self.welcomed = False
        if go_back:
            self.sent_upto = self.state["acked"]  # re-send everything not acked
            self.in_flight.clear()
            self.to_send = deque(self.batches)
        self._send(transport.hello(self.actor_id, self.state["acked"], self.env.observation_space, self.act_space))

    def _send(self, message_or_frames: dict[str, Any] | list[Any]) -> bool:
        frames = encode(message_or_frames) if isinstance(message_or_frames, dict) else message_or_frames
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:  # no learner connected, or its queue is full: the spool keeps it
            return False

    def unacked_steps(self) -> int:
        """Steps taken (batched or not) that the learner has not acked."""
        return self.next_seq - 1 - self.state["acked"]

    def _close_batch(self) -> None:
        """Encode the steps taken so far as one batch, append it to the spool, queue it to send."""
        first, steps = self.next_seq - len(self.taken), self.taken
        frames = encode(transport.transitions_message(self.actor_id, first, transport.stack_steps(steps)))
        segment = self.spool.append(frames)  # one writev: on disk for any later crash of this process
        self.spool.sync()  # fsync only with runtime.fsync
        last = first + len(steps) - 1
        self.segment_last_seq[segment] = last
        step_bytes = sum(memoryview(f).nbytes for f in frames) // len(steps)  # cameras vary: size by bytes
        self.batch_max = max(1, min(BATCH_MAX_TRANSITIONS, BATCH_MAX_BYTES // step_bytes))
        self.batches[first] = (last, frames)
        self.to_send.append(first)
        self.taken = []

    def batch_min(self) -> int:
        """Steps a batch holds before the link's idleness alone closes it: ``BATCH_MIN_SPAN_S`` of steps at the
        recent step rate, at most a third of ``runtime.max_unacked`` (two batches in flight and one filling)."""
        if self.step_interval is None or self.step_interval <= 0:
            return 1
        wanted = int(BATCH_MIN_SPAN_S / self.step_interval)
        return max(1, min(wanted, self.batch_max, self.config.runtime.max_unacked // (MAX_IN_FLIGHT_BATCHES + 1)))

    def _pump(self) -> None:
        """Close a batch when it is due, then send the batches the learner has not been sent since the last go-back."""
        idle_link = len(self.in_flight) < MAX_IN_FLIGHT_BATCHES and len(self.taken) >= self.batch_min()
        if self.taken and (idle_link or len(self.taken) >= self.batch_max
                           or time.monotonic() - self.taken_since >= BATCH_MAX_DELAY_S):
            self._close_batch()
        while self.to_send:
            batch = self.batches.get(self.to_send[0])
            if batch is not None:  # else acked meanwhile
                if not self._send(batch[1]):
                    return  # no learner, or its queue is full: the spool keeps them
                self.sent_upto = batch[0]
                self.in_flight.append(batch[0])
            self.to_send.popleft()

    def _acked(self, acked: int) -> None:
        if acked > self.state["acked"]:
            self.state["acked"] = acked
            self.last_progress = time.monotonic()
            if self.last_progress - self.last_state_save > STATE_SAVE_PERIOD_S:
                self._save_state()
            while self.batches and next(iter(self.batches.values()))[0] <= acked:
                self.batches.popitem(last=False)
            self.next_seq = max(self.next_seq, acked + 1)  # never reuse a seq the learner already holds
            while self.in_flight and self.in_flight[0] <= acked:
                self.in_flight.popleft()
            self._compact_spool()
        self.sent_upto = max(self.sent_upto, acked)

    def _compact_spool(self) -> None:
        done = [s for s, last in self.segment_last_seq.items() if last <= self.state["acked"] and s != self.spool.segment]
        if done:
            self._save_state()  # acked on disk first: the seq numbering must survive the deleted files
            keep = min([s for s in self.segment_last_seq if s not in done] + [self.spool.segment])
            self.spool.drop_before(keep)
            for s in done:
                if s < keep:
                    del self.segment_last_seq[s]

    def _receive(self) -> None:
        """Handle every waiting ack, welcome, error and weight broadcast."""
        while self.socket.poll(0):
            try:
                message = transport.read_message(self.socket.recv_multipart(copy=False))
            except ProtocolError as exc:
                console.print(f"[yellow]actor {self.actor_id}: unreadable reply from the learner: {exc}[/yellow]")
                continue
            kind = message["kind"]
            if kind == "error":
                raise HilrlError(f"the learner at {self.learner} refused our transitions: {message.get('error')}; "
                                 "run actor and learner with the same config")
            if kind == "welcome":
                self.welcomed = True
                self._acked(message["acked"])
                self._load_weights(message["version"], message["weights"])
                # a learner bound to all interfaces names 0.0.0.0: its weights are at the host we reach it at
                weights_address = stream_address(self.learner, message["weights_address"])
                if weights_address != self.weights_address:
                    if self.weights_address:
                        self.sub.disconnect(self.weights_address)
                    self.weights_address = weights_address
                    self.sub.connect(self.weights_address)
            elif kind == "ack":
                self._acked(message["acked"])
                if message.get("paced"):
                    self.last_progress = time.monotonic()  # the learner holds our batches while it updates: wait
                if message.get("gap") and time.monotonic() - self.last_hello > 0.2:
                    self._hello(go_back=True)  # the learner lost what we sent (it restarted): resume after its ack
            else:
                continue
            self.learner_done = self.learner_done or bool(message.get("done"))
        latest = None
        while self.sub.poll(0):
            try:
                latest = transport.read_message(self.sub.recv_multipart(copy=False))
            except ProtocolError:
                continue
        if latest is not None and latest["kind"] == "weights":
            self._load_weights(latest["version"], latest["weights"])

    def _load_weights(self, version: int, weights: dict[str, np.ndarray]) -> None:
        if version == self.state["weights_version"]:
            return
        self.agent.load_policy_weights(weights)
        self.state["weights_version"] = version
        self._weights = weights
        if time.monotonic() - self.last_weights_save > WEIGHTS_SAVE_PERIOD_S:
            self._save_weights()

    def _save_weights(self) -> None:
        weights = getattr(self, "_weights", None)
        if weights is None:
            return
        tmp = self.out / "weights.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **weights)
        os.replace(tmp, self.out / "weights.npz")
        self.last_weights_save = time.monotonic()

    def _save_state(self) -> None:
        self.last_state_save = time.monotonic()
        tmp = self.out / "actor_state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.out / "actor_state.json")

    def _service_link(self) -> None:
        self._receive()
        now = time.monotonic()
        timeout = self.config.runtime.ack_timeout_s
        if self.unacked_steps() and now - self.last_progress > timeout and now - self.last_hello > timeout:
            self._hello(go_back=True)  # a silent learner: say hello again and re-send from its last ack
        elif not self.welcomed and now - self.last_hello > HELLO_RETRY_S:
            self._hello(go_back=False)  # a hello sent before the connection was up is dropped, not queued
        self._pump()

    # ---------------------------------------------------------------- acting

    def _take(self, transition: dict[str, Any]) -> None:
        """Number a step and hold it for the next batch (:meth:`_pump` closes it)."""
        now = time.monotonic()
        if self.last_take is not None:
            interval = now - self.last_take
            self.step_interval = interval if self.step_interval is None else (
                (1 - STEP_RATE_SMOOTHING) * self.step_interval + STEP_RATE_SMOOTHING * interval)
        self.last_take = now
        if not self.taken:
            self.taken_since = now
        self.taken.append(transition)
        self.next_seq += 1
        if len(self.taken) >= self.batch_max:
            self._close_batch()

    def act(self) -> None:
        """One env step of the step source (the policy acts, or the person takes over), held for the learner."""
        self._take(self.steps.step())
        counters = self.counters
        self.state.update(steps=counters["env_steps"], episodes=counters["episodes"],
                          successes=counters["successes"])

    def run(self) -> dict[str, Any]:
        """Act until the learner says it is done, ``steps`` were taken, or SIGTERM/SIGINT; returns the counters."""
        s = self.state
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "stop_requested", True))
        taken = 0
        try:
            while not (self.learner_done or self.stop_requested):
                self._service_link()
                if self.steps_limit is not None and taken >= self.steps_limit:
                    if not self.unacked_steps():
                        break
                    time.sleep(0.01)
                    continue
                if self.unacked_steps() >= self.config.runtime.max_unacked:
                    time.sleep(0.01)  # the learner is far behind or away: do not run the robot unrecorded
                    continue
                self.act()
                taken += 1
        finally:
            if self.taken:
                self._close_batch()  # stopped: keep the last steps for the next session
            self._save_state()
            self._save_weights()
        return dict(s, unacked=self.unacked_steps())

    def close(self) -> None:
        self.spool.close()
        self.env.close()
        self.socket.close(linger=0)
        self.sub.close(linger=0)


def run_actor(config: ExperimentConfig, out: str | os.PathLike, learner: str, actor_id: str = "actor0",
              index: int = 0, steps: int | None = None) -> dict[str, Any]:
    """`hilrl actor`: act for the learner at ``learner`` until it is done; returns the actor's counters."""
    actor = Actor(config, out, learner, actor_id=actor_id, index=index, steps=steps)
    try:
        return actor.run()
    finally:
        actor.close()
