"""The learner's server: its two ZMQ sockets and its side of the actor protocol.

Protocol in :mod:`hilrl.runtime.distributed.transport`. The ROUTER socket (``runtime.bind``) takes
``hello`` and ``transitions`` messages from actors; the PUB socket (``runtime.weights_bind``, else a free
port on the same host) broadcasts ``weights``. Both use CurveZMQ when ``runtime.learner_secret_key`` is
set, which is required off loopback. One round of :meth:`LearnerServer.serve`:

1. take messages holding up to about ``limit`` transitions; check each (schema, shapes, finite numbers,
   one numpy call per stacked field, against the learner's spaces; a hello's spaces against the
   learner's) and answer a bad one with an ``error``;
2. hand each checked ``transitions`` batch to the learner, which stores the steps after the actor's
   acked seq and logs the batch (:meth:`ServedLearner.accept`); answer a ``hello`` with a ``welcome``;
3. let the learner flush its log (:meth:`ServedLearner.end_round`: acked means written), then ack
   each actor heard from with its highest contiguous seq, and a gap flag where a batch came after one.

A learner behind on its updates (paced) reads nothing and calls :meth:`LearnerServer.hold` instead: every actor
heard from gets a ``paced`` ack, so it waits for the learner rather than re-sending after ``runtime.ack_timeout_s``.

The server keeps no state of the run: what is stored, the acked seqs, the spaces and the weights belong
to the learner it serves (:class:`hilrl.runtime.distributed.learner.Learner`, the training loop).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import zmq

from hilrl.config import RuntimeConfig
from hilrl.envs import auth
from hilrl.envs.protocol import ProtocolError, encode
from hilrl.envs.remote import stream_address
from hilrl.errors import HilrlError
from hilrl.runtime.distributed import transport
from hilrl.runtime.progress import console

DRAIN_TRANSITIONS = 256  # transitions handled between two log flushes / ack rounds (the last batch may pass it)
ROUTER_QUEUE_MESSAGES = 512
WEIGHTS_QUEUE_MESSAGES = 4  # a slow actor should get the newest weights, not a queue of old ones


class ServedLearner(Protocol):
    """What the server asks of the learner it serves."""

    obs_space: Any  # None until built (env.remote: from the first actor's hello)
    stored_space: Any  # the observations transitions carry (image keys as cached features with a frozen encoder)
    act_space: Any
    acked: dict[str, int]  # actor -> highest seq stored (and, after end_round, written)
    counters: dict[str, int]  # the server counts "rejected" messages and "dropped" steps here
    weights_version: int
    weights: dict[str, np.ndarray]

    @property
    def built(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def build(self, obs_space: Any, act_space: Any) -> None:
        """Networks and buffers for these spaces (called with the first actor's spaces when env.remote is set)."""

    def stored_reward_terms(self) -> Any:
        """The reward-term names the buffers hold (``None`` while empty): a batch must carry the same."""

    def accept(self, message: dict[str, Any], frames: list[Any] | None) -> int:
        """Store the steps of a checked batch after its actor's acked seq (logging ``frames``); how many."""

    def rejoin(self, actor: str, acked: int) -> None:
        """An actor was acked up to ``acked``, past what the learner holds: continue after it."""

    def end_round(self) -> None:
        """After a round of messages, before the acks: flush what was stored (acked means written)."""


class LearnerServer:
    """The learner's ROUTER and PUB sockets, bound; :meth:`serve` a round of messages, :meth:`publish` weights.

    Args:
        learner: the learner served (:class:`ServedLearner`).
        runtime: ``config.runtime``: addresses and CurveZMQ keys.
        bind: transition channel address (default ``runtime.bind``); ``tcp://HOST:*`` picks a port.
    """

    def __init__(self, learner: ServedLearner, runtime: RuntimeConfig, bind: str | None = None) -> None:
        self.learner, self.runtime = learner, runtime
        bind = bind or runtime.bind
        self.context = zmq.Context.instance()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.rcvhwm = ROUTER_QUEUE_MESSAGES
        self.pub = self.context.socket(zmq.PUB)
        self.pub.linger = 0
        self.pub.sndhwm = WEIGHTS_QUEUE_MESSAGES
        self.authenticator = None
        self.heard: dict[bytes, str] = {}  # ROUTER identity -> actor id, of every actor that sent transitions
        try:
            self._secure(bind)
            self.router.bind(bind)
            host = self.router.last_endpoint.decode().rpartition(":")[0]
            self.pub.bind(runtime.weights_bind or f"{host}:*")
        except zmq.ZMQError as exc:
            self.close()
            raise HilrlError(f"cannot bind the learner to {bind} ({exc}); pick a free port with --bind "
                             "tcp://HOST:PORT (or tcp://HOST:* for any)") from None
        except BaseException:
            self.close()
            raise
        self.address = self.router.last_endpoint.decode()
        # a PUB bound to all interfaces reports 0.0.0.0: actors reach it at the host they reach the ROUTER at
        self.weights_address = stream_address(self.address, self.pub.last_endpoint.decode())

    def _secure(self, address: str) -> None:
        """CurveZMQ on both sockets when ``runtime.learner_secret_key`` is set; required off loopback, where
        anyone could otherwise send transitions or read the policy (as the robot server, PROTOCOL.md)."""
        runtime = self.runtime
        loopback = auth.is_loopback(address) and (runtime.weights_bind is None or
                                                  auth.is_loopback(runtime.weights_bind))
        if runtime.learner_secret_key is None:
            if not loopback:
                raise HilrlError(f"the learner binds {address}, off loopback: set runtime.learner_secret_key and "
                                 "runtime.allow_keys (CurveZMQ keys from `hilrl keys generate`) so that only your "
                                 "actors can send transitions and receive the policy")
            return
        self.authenticator, allowed = auth.serve_curve(self.context, [self.router, self.pub],
                                                       runtime.learner_secret_key, runtime.allow_keys)
        console.print(f"learner: CurveZMQ on, {allowed} allowed actor key(s) in {runtime.allow_keys}", soft_wrap=True)

    def serve(self, timeout_ms: int, limit: int = DRAIN_TRANSITIONS) -> None:
        """Handle messages holding up to about ``limit`` transitions, let the learner flush, then ack every
        actor heard from (module docstring)."""
        if not self.router.poll(timeout_ms):
            return
        learner = self.learner
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
                if not learner.built:
                    raise ProtocolError("send hello with your observation and action spaces before transitions "
                                        "(this learner has no env of its own: env.remote is set)")
                n = transport.check_transitions(message, learner.stored_space, learner.act_space,
                                                learner.stored_reward_terms())
            except ProtocolError as exc:
                learner.counters["rejected"] += 1
                self.router.send_multipart([identity, *encode(transport.error(str(exc)))])
                continue
            actor = message["actor"]
            self.heard[identity] = actor
            stored = learner.accept(message, frames)
            handled += n
            gap = not stored and not learner.done and message["seq"] > learner.acked.get(actor, 0) + 1
            learner.counters["dropped"] += n - stored
            previous_gap = replies.get(identity, (actor, False))[1]
            replies[identity] = (actor, previous_gap or gap)
        learner.end_round()
        for identity, (actor, gap) in replies.items():
            self.router.send_multipart([identity, *encode(transport.ack(learner.acked.get(actor, 0), learner.done,
                                                                        gap))])

    def hold(self) -> None:
        """Tell every actor heard from that the learner is alive and holds what they sent (a ``paced`` ack of
        what is acked already): it is behind on its updates and reads their batches once it catches up."""
        learner = self.learner
        for identity, actor in self.heard.items():
            self.router.send_multipart([identity, *encode(transport.ack(learner.acked.get(actor, 0), learner.done,
                                                                        paced=True))])

    def _welcome(self, identity: bytes, message: dict[str, Any]) -> None:
        """Check a hello (its spaces against the learner's, building the learner from the first one when it has
        no env of its own) and answer with the acked seq, the weights' address and the current weights."""
        learner = self.learner
        actor, their_acked = message.get("actor"), message.get("acked")
        if not isinstance(actor, str) or not actor or type(their_acked) is not int:
            raise ProtocolError("hello needs 'actor' (a non-empty string) and 'acked' (an int)")
        spaces = transport.hello_spaces(message)
        if spaces is None and not learner.built:
            raise ProtocolError("hello must carry 'spaces' (observation and action): this learner has no env of "
                                "its own (env.remote is set); run an actor of the same hilrl version")
        if spaces is not None:
            if not learner.built:
                console.print(f"learner: spaces from actor {actor} (env.remote is set)", soft_wrap=True)
                learner.build(*spaces)
            for what, theirs, ours in (("observation", spaces[0], learner.obs_space),
                                       ("action", spaces[1], learner.act_space)):
                if theirs != ours:
                    raise ProtocolError(f"actor {actor!r} has {what} space {theirs}, but this learner trains on "
                                        f"{ours}; run every actor with the learner's env config (same task, cameras, "
                                        "image size and obs keys)")
        if their_acked > learner.acked.get(actor, 0):
            learner.rejoin(actor, their_acked)
        self.router.send_multipart([identity, *encode(transport.welcome(
            learner.acked.get(actor, 0), learner.done, self.weights_address, learner.weights_version,
            learner.weights))], copy=False)

    def publish(self) -> None:
        """Broadcast the learner's current weights (``weights_version``) to every actor."""
        self.pub.send_multipart(encode(transport.weights_message(self.learner.weights_version, self.learner.weights)),
                                copy=False)

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None
