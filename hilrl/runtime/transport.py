"""What travels between actors and the learner, and the durable log both keep of it.

Every message is framed by :mod:`hilrl.envs.protocol` (a msgpack header, big numpy
arrays in their own zero-copy frames); nothing here is a second codec. Channels:

* actor DEALER -> learner ROUTER (``runtime.bind``): ``hello`` (with the actor's observation
  and action spaces), then ``transitions`` messages: a run of consecutive steps numbered
  ``seq, seq + 1, ...`` per actor, every field stacked along a leading axis of length ``n``
  (one array per field, so the learner checks and stores a batch with a few numpy calls).
  The learner answers ``welcome`` to a hello and ``ack`` after storing: ``acked`` is the
  highest seq such that every seq up to it is stored *and* written to its log. It stores
  only the steps after ``acked`` of a batch that starts at or before ``acked + 1`` (go-back-N):
  duplicates are skipped, a batch after a gap is dropped, and the ack tells the actor where
  to resume.
* learner PUB -> actor SUB (address given in ``welcome``): ``weights``, versioned,
  every ``runtime.publish_every`` learner updates. A welcome carries the current weights
  too, so an actor that joins late need not wait for the next broadcast.

:class:`RecordLog` appends whole messages (their wire frames, CRC-checked) to segment
files and flushes them; a reader stops at a torn last record, which was never acked.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import zmq

from hilrl.envs.protocol import ProtocolError, decode, space_from_wire, space_to_wire
from hilrl.errors import HilrlError

WIRE_VERSION = 2  # 2: batched `transitions` and spaces in `hello` (1 sent one `transition` per message)
# A 128x128x3 obs + next_obs is ~100 kB; 64 MB leaves room for batches of big multi-camera observations.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TRANSITION_KEYS = frozenset({"obs", "action", "reward", "next_obs", "terminated", "truncated", "intervened",
                             "intervention_start", "policy_action", "is_success", "episode_start"})
FLAG_KEYS = ("terminated", "truncated", "intervened", "intervention_start", "is_success", "episode_start")


# ---------------------------------------------------------------------------- messages


def hello(actor: str, acked: int, observation_space: gym.Space | None = None,
          action_space: gym.Space | None = None) -> dict[str, Any]:
    """First message of an actor (and again after a silence): ``acked`` is what it last heard.

    The spaces let a learner that has no env of its own (``env.remote``: the arm is at the actor)
    build its networks, and let every learner refuse an actor that runs another task.
    """
    message = {"v": WIRE_VERSION, "kind": "hello", "actor": actor, "acked": acked}
    if observation_space is not None and action_space is not None:
        message["spaces"] = {"observation": space_to_wire(observation_space), "action": space_to_wire(action_space)}
    return message


def stack_transitions(transitions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack per-step transitions (maps of arrays, numbers, flags) field by field along a new first axis.

    One transition is stacked without a copy (each array gets a leading axis of 1).
    """
    first = transitions[0]
    stacked: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, Mapping):
            stacked[key] = stack_transitions([t[key] for t in transitions])
        elif len(transitions) == 1:
            stacked[key] = np.asarray(value)[None]
        else:
            stacked[key] = np.stack([np.asarray(t[key]) for t in transitions])
    return stacked


def transitions_message(actor: str, seq: int, stacked: Mapping[str, Any]) -> dict[str, Any]:
    """Steps ``seq .. seq + n - 1`` of ``actor``, stacked by :func:`stack_transitions`."""
    return {"v": WIRE_VERSION, "kind": "transitions", "actor": actor, "seq": seq, "t": dict(stacked)}


def transition_message(actor: str, seq: int, transition: Mapping[str, Any]) -> dict[str, Any]:
    """A ``transitions`` message holding the single step ``seq``."""
    return transitions_message(actor, seq, stack_transitions([transition]))


def ack(acked: int, done: bool, gap: bool = False) -> dict[str, Any]:
    """``gap``: a batch after ``acked + 1`` was dropped (some were lost): re-send from ``acked + 1`` now."""
    return {"v": WIRE_VERSION, "kind": "ack", "acked": acked, "done": done, "gap": gap}


def welcome(acked: int, done: bool, weights_address: str, version: int, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "kind": "welcome", "acked": acked, "done": done, "weights_address": weights_address,
            "version": version, "weights": weights}


def weights_message(version: int, weights: dict[str, np.ndarray]) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "kind": "weights", "version": version, "weights": weights}


def error(text: str) -> dict[str, Any]:
    return {"v": WIRE_VERSION, "kind": "error", "error": text}


def read_message(frames: list[Any]) -> dict[str, Any]:
    """Decode and check the envelope (version, kind); raise :class:`ProtocolError` naming the defect."""
    message = decode(frames, max_bytes=MAX_MESSAGE_BYTES)
    if message.get("v") != WIRE_VERSION:
        raise ProtocolError(f"wire version {message.get('v')!r} not supported; both ends must run the same hilrl "
                            f"(v={WIRE_VERSION})")
    if message.get("kind") not in ("hello", "transitions", "ack", "welcome", "weights", "error"):
        raise ProtocolError(f"unknown message kind {message.get('kind')!r}")
    return message


def hello_spaces(message: Mapping[str, Any]) -> tuple[gym.spaces.Dict, gym.spaces.Box] | None:
    """The (observation, action) spaces a ``hello`` carries, or ``None`` if it carries none."""
    spaces = message.get("spaces")
    if spaces is None:
        return None
    try:
        observation, action = space_from_wire(spaces["observation"]), space_from_wire(spaces["action"])
    except ProtocolError:
        raise
    except Exception as exc:  # a malformed description: missing keys, bad shapes or dtypes
        raise ProtocolError(f"hello 'spaces' is not a valid space description ({type(exc).__name__}: {exc})") from None
    if not isinstance(observation, gym.spaces.Dict) or not isinstance(action, gym.spaces.Box):
        raise ProtocolError("hello 'spaces' must hold a Dict observation space and a Box action space")
    return observation, action


def check_transitions(message: Mapping[str, Any], observation_space: gym.spaces.Dict,
                      action_space: gym.spaces.Box) -> int:
    """Validate a decoded ``transitions`` message against the learner's spaces; return its step count ``n``.

    Everything the replay buffer will copy is checked here, one numpy call per stacked field
    (keys, shapes, dtypes, finite numbers), so a bad actor gets an error reply and nothing
    reaches the buffers.
    """
    actor, seq, t = message.get("actor"), message.get("seq"), message.get("t")
    if not isinstance(actor, str) or not actor:
        raise ProtocolError("field 'actor' must be a non-empty string")
    if type(seq) is not int or seq < 1:
        raise ProtocolError(f"field 'seq' must be an int >= 1, got {seq!r}")
    if not isinstance(t, dict) or set(t) != TRANSITION_KEYS:
        got = sorted(t) if isinstance(t, dict) else type(t).__name__
        raise ProtocolError(f"field 't' must be a map with keys {sorted(TRANSITION_KEYS)}, got {got}")
    reward = t["reward"]
    if not isinstance(reward, np.ndarray) or reward.ndim != 1 or reward.size == 0 or reward.dtype.kind not in "fiu":
        raise ProtocolError("t.reward must be a non-empty 1-d array of numbers (one per step)")
    n = len(reward)
    if not np.isfinite(reward).all():
        raise ProtocolError("t.reward holds NaN or inf")
    for side in ("obs", "next_obs"):
        obs = t[side]
        if not isinstance(obs, dict) or set(obs) != set(observation_space.spaces):
            raise ProtocolError(f"t.{side} must have keys {sorted(observation_space.spaces)}")
        for key, space in observation_space.spaces.items():
            value = obs[key]
            if not isinstance(value, np.ndarray) or value.shape != (n, *space.shape) or value.dtype != space.dtype:
                got = (value.shape, str(value.dtype)) if isinstance(value, np.ndarray) else type(value).__name__
                raise ProtocolError(f"t.{side}.{key} must be an array of shape {(n, *space.shape)} (n={n} steps) and "
                                    f"dtype {space.dtype}, got {got}")
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ProtocolError(f"t.{side}.{key} holds NaN or inf")
    for name in ("action", "policy_action"):
        value = t[name]
        if not isinstance(value, np.ndarray) or value.shape != (n, *action_space.shape) or value.dtype != np.float32:
            raise ProtocolError(f"t.{name} must be a float32 array of shape {(n, *action_space.shape)} (n={n} steps)")
        if not np.isfinite(value).all():
            raise ProtocolError(f"t.{name} holds NaN or inf")
    for flag in FLAG_KEYS:
        value = t[flag]
        if not isinstance(value, np.ndarray) or value.dtype != np.bool_ or value.shape != (n,):
            raise ProtocolError(f"t.{flag} must be a bool array of shape ({n},)")
    return n


# ---------------------------------------------------------------------------- policy weights


def policy_weights(agent: Any) -> dict[str, np.ndarray]:
    """What an actor needs to act: the SAC observation encoder and actor, as flat numpy arrays.

    SAC's actor reads features from the critic's encoder, so both travel; the critics stay.
    """
    if getattr(agent, "algo_name", None) != "sac":
        raise HilrlError(f"runtime: distributed runs the SAC learner only (algo.name: sac), not "
                         f"{getattr(agent, 'algo_name', type(agent).__name__)!r}")
    weights = {f"encoder.{k}": v for k, v in agent.encoder.state_dict().items()}
    weights.update({f"actor.{k}": v for k, v in agent.actor.state_dict().items()})
    return {k: v.detach().cpu().contiguous().numpy().copy() for k, v in weights.items()}


def load_policy_weights(agent: Any, weights: Mapping[str, np.ndarray]) -> None:
    """Copy :func:`policy_weights` into ``agent`` (an actor's SAC built with the same config)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "actor": {}}
    for name, value in weights.items():
        part, _, key = name.partition(".")
        if part not in parts:
            raise ProtocolError(f"weights entry {name!r}: expected names starting with 'encoder.' or 'actor.'")
        parts[part][key] = torch.from_numpy(np.array(value))
    try:
        agent.encoder.load_state_dict(parts["encoder"])
        agent.actor.load_state_dict(parts["actor"])
    except RuntimeError as exc:
        raise HilrlError(f"the learner's weights do not fit this actor's network ({exc}); run actor and learner "
                         "with the same config") from None


# ---------------------------------------------------------------------------- durable log

_RECORD_HEAD = struct.Struct("<II")  # payload length, crc32 of the payload


def _views(frames: list[Any]) -> list[memoryview]:
    return [(f.buffer if isinstance(f, zmq.Frame) else memoryview(f)).cast("B") for f in frames]


def _unpack(payload: bytes) -> list[memoryview]:
    view = memoryview(payload)
    (count,) = struct.unpack_from("<I", view)
    sizes = struct.unpack_from(f"<{count}Q", view, 4)
    frames, offset = [], 4 + 8 * count
    for size in sizes:
        frames.append(view[offset:offset + size])
        offset += size
    return frames


class RecordLog:
    """Append-only log of whole messages in numbered segment files ``DIR/seg_NNNNNN.log``.

    :meth:`append` writes, :meth:`sync` makes the writes survive the process (flush) or the
    machine (``fsync=True``). A new writer always starts a new segment, so a torn record can
    only sit at the end of a segment written by a process that died.
    """

    def __init__(self, directory: str | os.PathLike, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment = max(self.segments(), default=-1) + 1
        self._file = open(self._path(self.segment), "ab")
        self.records_in_segment = 0

    def _path(self, index: int) -> Path:
        return self.directory / f"seg_{index:06d}.log"

    def segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.directory.glob("seg_*.log"))

    def append(self, frames: list[Any]) -> None:
        # the frames go to the file one by one, the CRC runs over them in turn: a batch is never joined in memory
        views = _views(frames)
        index = struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views))
        crc = zlib.crc32(index)
        for view in views:
            crc = zlib.crc32(view, crc)
        self._file.write(_RECORD_HEAD.pack(len(index) + sum(v.nbytes for v in views), crc))
        self._file.write(index)
        for view in views:
            self._file.write(view)
        self.records_in_segment += 1

    def sync(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def rotate(self) -> int:
        """Close the current segment and start the next; returns the new segment's index."""
        self.sync()
        self._file.close()
        self.segment += 1
        self._file = open(self._path(self.segment), "ab")
        self.records_in_segment = 0
        return self.segment

    def drop_before(self, index: int) -> None:
        """Delete segments older than ``index`` (their contents live on in a checkpoint or were acked)."""
        for old in self.segments():
            if old < index and old != self.segment:
                self._path(old).unlink(missing_ok=True)

    def read(self, first_segment: int = 0) -> Iterator[tuple[int, list[memoryview]]]:
        """Every intact record in this log's segments ``>= first_segment`` (:func:`read_records`)."""
        return read_records(self.directory, first_segment)

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def read_records(directory: str | os.PathLike, first_segment: int = 0) -> Iterator[tuple[int, list[memoryview]]]:
    """Yield ``(segment, frames)`` of every intact record of a :class:`RecordLog` folder, oldest first.

    A record whose length or CRC does not check out ends its segment: its writer died while
    writing it, so it was never acknowledged.
    """
    directory = Path(directory)
    for index in sorted(int(p.stem[4:]) for p in directory.glob("seg_*.log")):
        if index < first_segment:
            continue
        data = (directory / f"seg_{index:06d}.log").read_bytes()
        offset = 0
        while offset + _RECORD_HEAD.size <= len(data):
            length, crc = _RECORD_HEAD.unpack_from(data, offset)
            payload = data[offset + _RECORD_HEAD.size: offset + _RECORD_HEAD.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            yield index, _unpack(payload)
            offset += _RECORD_HEAD.size + length
