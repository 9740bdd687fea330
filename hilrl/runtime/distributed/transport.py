"""What travels between actors and the learner, and the durable log both keep of it.

Every message is framed by :mod:`hilrl.envs.protocol` (a msgpack header, big numpy
arrays in their own zero-copy frames); nothing here is a second codec. Channels:

* actor DEALER -> learner ROUTER (``runtime.bind``): ``hello`` (with the actor's observation
  and action spaces), then ``transitions`` messages: a run of consecutive steps numbered
  ``seq, seq + 1, ...`` per actor, every field stacked along a leading axis of length ``n``
  (one array per field, so the learner checks and stores a batch with a few numpy calls).
  A step's ``next_obs`` is almost always the next step's ``obs``; it travels only where it is
  not (``own_next``: an episode's last step, and the batch's last step), so one observation
  crosses the wire per step, and the learner's replay ring keeps that form (the shared ``next_obs``
  of :mod:`hilrl.data.buffers`).
  The learner answers ``welcome`` to a hello and ``ack`` after storing: ``acked`` is the
  highest seq such that every seq up to it is stored *and* written to its log. It stores
  only the steps after ``acked`` of a batch that starts at or before ``acked + 1`` (go-back-N):
  duplicates are skipped, a batch after a gap is dropped, and the ack tells the actor where
  to resume. A learner pacing its actors (``runtime.max_update_ratio``) leaves their batches queued while it
  updates and sends a ``paced`` ack (nothing new acked) at least every half second, so they wait instead of
  re-sending. A step may carry the task's named reward terms (``reward_terms``: a map of ``(n,)``
  float arrays), which the learner stores for reward sources.
* learner PUB -> actor SUB (address given in ``welcome``): ``weights``, versioned,
  every ``runtime.publish_every`` learner updates. A welcome carries the current weights
  too, so an actor that joins late need not wait for the next broadcast.

:class:`RecordLog` appends whole messages (their wire frames, CRC-checked) to segment
files; a reader stops at a torn last record, which was never acked. What a record's check must
catch: after a ``kill -9`` a ``write`` leaves a *short* file (a prefix of the record), never garbage,
so the length and a CRC over the record's small head (frame sizes + msgpack header) find the torn
tail without reading the big arrays twice. A log opened with ``fsync=True`` claims to survive the
machine too; a power cut can leave a tail of zeros or stale blocks, so there every record also
carries a CRC of its whole body.
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
import zmq

from hilrl.envs.protocol import ProtocolError, decode, space_from_wire, space_to_wire, validate_reward_term_names
from hilrl.errors import HilrlError

# 4: optional `reward_terms` per step; 3: `own_next` (next_obs only where it is not the next step's obs);
# 2: batched `transitions` and spaces in `hello`; 1: one `transition` per message
WIRE_VERSION = 4
# A 128x128x3 obs + next_obs is ~100 kB; 64 MB leaves room for batches of big multi-camera observations.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TRANSITION_KEYS = frozenset({"obs", "action", "reward", "next_obs", "own_next", "terminated", "truncated",
                             "intervened", "intervention_start", "policy_action", "is_success", "episode_start"})
FLAG_KEYS = ("terminated", "truncated", "intervened", "intervention_start", "is_success", "episode_start")
OPTIONAL_KEYS = frozenset({"reward_terms"})


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


def stack_transitions(transitions: Sequence[Mapping[str, Any]], skip: str | None = None) -> dict[str, Any]:
    """Stack per-step transitions (maps of arrays, numbers, flags) field by field along a new first axis.

    One transition is stacked without a copy (each array gets a leading axis of 1). Field ``skip``
    is left out. ``np.array`` over the list, not ``np.stack``: the same result at a third of the
    Python cost per step for the small fields (a batch has a dozen of them per step).
    """
    first = transitions[0]
    stacked: dict[str, Any] = {}
    for key, value in first.items():
        if key == skip:
            continue
        if isinstance(value, Mapping):
            stacked[key] = stack_transitions([t[key] for t in transitions])
        elif len(transitions) == 1:
            stacked[key] = np.asarray(value)[None]
        else:
            stacked[key] = np.array([t[key] for t in transitions])
    return stacked


def stack_steps(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack consecutive env steps for the wire: :func:`stack_transitions`, but ``next_obs`` only where needed.

    Step ``i``'s ``next_obs`` travels only when it is not the very object the actor gave as step
    ``i + 1``'s ``obs`` (an episode's last step, a step whose successor is another episode) and for
    the last step; ``own_next`` marks those rows. The actor's loop hands the same dict on
    (``obs = next_obs``), so an object identity test finds them without comparing pixels.
    """
    n = len(steps)
    own_next = np.fromiter((i == n - 1 or steps[i]["next_obs"] is not steps[i + 1]["obs"] for i in range(n)),
                           bool, count=n)
    stacked = stack_transitions(steps, skip="next_obs")
    stacked["next_obs"] = stack_transitions([steps[i]["next_obs"] for i in np.flatnonzero(own_next)])
    stacked["own_next"] = own_next
    return stacked


def transitions_message(actor: str, seq: int, stacked: Mapping[str, Any]) -> dict[str, Any]:
    """Steps ``seq .. seq + n - 1`` of ``actor``, stacked by :func:`stack_steps`."""
    return {"v": WIRE_VERSION, "kind": "transitions", "actor": actor, "seq": seq, "t": dict(stacked)}


def transition_message(actor: str, seq: int, transition: Mapping[str, Any]) -> dict[str, Any]:
    """A ``transitions`` message holding the single step ``seq`` (a step with ``next_obs``, or any map)."""
    stacked = stack_steps([transition]) if "next_obs" in transition else stack_transitions([transition])
    return transitions_message(actor, seq, stacked)


def ack(acked: int, done: bool, gap: bool = False, paced: bool = False) -> dict[str, Any]:
    """``gap``: a batch after ``acked + 1`` was dropped (some were lost): re-send from ``acked + 1`` now.
    ``paced``: the learner is alive but holds what was sent until its updates catch up (``runtime.max_update_ratio``):
    wait, do not re-send."""
    return {"v": WIRE_VERSION, "kind": "ack", "acked": acked, "done": done, "gap": gap, "paced": paced}


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
                      action_space: gym.spaces.Box, reward_terms: Sequence[str] | None = None) -> int:
    """Validate a decoded ``transitions`` message against the learner's spaces; return its step count ``n``.

    Everything the replay buffer will copy is checked here, one numpy call per stacked field
    (keys, shapes, dtypes, finite numbers), so a bad actor gets an error reply and nothing
    reaches the buffers. ``reward_terms``: the term names the learner's buffer already stores
    (``None``: any names, or none).
    """
    actor, seq, t = message.get("actor"), message.get("seq"), message.get("t")
    if not isinstance(actor, str) or not actor:
        raise ProtocolError("field 'actor' must be a non-empty string")
    if type(seq) is not int or seq < 1:
        raise ProtocolError(f"field 'seq' must be an int >= 1, got {seq!r}")
    if not isinstance(t, dict) or not TRANSITION_KEYS <= set(t) <= TRANSITION_KEYS | OPTIONAL_KEYS:
        got = sorted(t) if isinstance(t, dict) else type(t).__name__
        raise ProtocolError(f"field 't' must be a map with keys {sorted(TRANSITION_KEYS)} (and optionally "
                            f"{sorted(OPTIONAL_KEYS)}), got {got}")
    reward = t["reward"]
    if not isinstance(reward, np.ndarray) or reward.ndim != 1 or reward.size == 0 or reward.dtype.kind not in "fiu":
        raise ProtocolError("t.reward must be a non-empty 1-d array of numbers (one per step)")
    n = len(reward)
    if not np.isfinite(reward).all():
        raise ProtocolError("t.reward holds NaN or inf")
    own_next = t["own_next"]
    if not isinstance(own_next, np.ndarray) or own_next.dtype != np.bool_ or own_next.shape != (n,) or not own_next[-1]:
        raise ProtocolError(f"t.own_next must be a bool array of shape ({n},) that is true at least for the last step "
                            "(whose next_obs no later step of the batch carries)")
    rows = {"obs": n, "next_obs": int(own_next.sum())}
    for side in ("obs", "next_obs"):
        obs, m = t[side], rows[side]
        if not isinstance(obs, dict) or set(obs) != set(observation_space.spaces):
            raise ProtocolError(f"t.{side} must have keys {sorted(observation_space.spaces)}")
        for key, space in observation_space.spaces.items():
            value = obs[key]
            if not isinstance(value, np.ndarray) or value.shape != (m, *space.shape) or value.dtype != space.dtype:
                got = (value.shape, str(value.dtype)) if isinstance(value, np.ndarray) else type(value).__name__
                what = f"n={n} steps" if side == "obs" else f"one row per true t.own_next, {m}"
                raise ProtocolError(f"t.{side}.{key} must be an array of shape {(m, *space.shape)} ({what}) and "
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
    terms = t.get("reward_terms", {})
    if not isinstance(terms, dict):
        raise ProtocolError("t.reward_terms must be a map of term names to arrays")
    validate_reward_term_names(list(terms))  # the robot protocol's rule for the names, where the terms come from
    for name, value in terms.items():
        if not isinstance(value, np.ndarray) or value.shape != (n,) or value.dtype.kind != "f":
            raise ProtocolError(f"t.reward_terms.{name} must be a float array of shape ({n},)")
        if not np.isfinite(value).all():
            raise ProtocolError(f"t.reward_terms.{name} holds NaN or inf")
    if reward_terms is not None and set(terms) != set(reward_terms):
        raise ProtocolError(f"t.reward_terms has {sorted(terms)}, but this learner stores {sorted(reward_terms)}; "
                            "run every actor with the learner's env config (the same task)")
    return n


# ---------------------------------------------------------------------------- durable log

SEGMENT_MAGIC = b"HILRLOG4"  # first bytes of every segment file; a log of another format is refused, not misread
_SEGMENT_HEAD = struct.Struct("<8sQ")  # magic, the segment's index (a recycled file names its new index here)
# payload length, CRC32 of the head (frame index + msgpack header frame), CRC32 of the whole payload, flags
_RECORD_HEAD = struct.Struct("<IIII")
_BODY_CHECKED = 1  # flag: the body CRC was computed (a log opened with fsync=True)


def _crc_seed(segment: int) -> int:
    """Every record CRC of segment ``segment`` starts from this, so a recycled file's old records fail their check."""
    return zlib.crc32(struct.pack("<Q", segment))


def _views(frames: list[Any]) -> list[memoryview]:
    return [(f.buffer if isinstance(f, zmq.Frame) else memoryview(f)).cast("B") for f in frames]


def _frame_index(payload: memoryview) -> tuple[int, tuple[int, ...]] | None:
    """``(offset of frame 0, frame sizes)`` from a payload's index, or ``None`` if it does not fit the payload."""
    if len(payload) < 4:
        return None
    (count,) = struct.unpack_from("<I", payload)
    start = 4 + 8 * count
    if count == 0 or start > len(payload):
        return None
    sizes = struct.unpack_from(f"<{count}Q", payload, 4)
    if start + sum(sizes) != len(payload):
        return None
    return start, sizes


def _unpack(payload: memoryview, start: int, sizes: tuple[int, ...]) -> list[memoryview]:
    frames, offset = [], start
    for size in sizes:
        frames.append(payload[offset:offset + size])
        offset += size
    return frames


def _write_all(fd: int, views: list[memoryview]) -> None:
    """One ``writev`` for the whole record (a short write, which a signal can cause, continues where it stopped)."""
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views = views[1:]
        if views and written:
            views = [views[0][written:], *views[1:]]


class RecordLog:
    """Append-only log of whole messages in numbered segment files ``DIR/seg_NNNNNN.log``.

    :meth:`append` hands a record to the OS in one ``writev`` (no user-space buffer: once it
    returns, the record survives the process); :meth:`sync` makes the writes survive the machine
    when ``fsync=True``. A new writer always starts a new segment, so a torn record can only sit at
    the end of a segment written by a process that died. Record checks: module docstring.

    Segments are recycled, as databases recycle write-ahead-log files: :meth:`drop_before` renames
    up to ``keep_free`` dropped segments to ``free_NNNNNN.log`` and a new segment reuses one,
    writing over it from the start. Writing into pages the OS already holds costs a fraction of
    growing a file (measured here: ~6 us instead of 27-60 us per 49 kB), and an image transition
    is written twice (actor spool, learner log). What the old records left behind the new ones
    fails its CRC, which is seeded with the segment index (indices never repeat in a folder).
    :meth:`close` deletes the free files.

    Args:
        directory: the log's folder (created).
        fsync: :meth:`sync` fsyncs, and records carry a CRC of their whole body.
        segment_bytes: start a new segment before a record that would take the current one past
            this size (``None``: only :meth:`rotate` does).
        keep_free: dropped segments kept for reuse.
    """

    def __init__(self, directory: str | os.PathLike, fsync: bool = False, segment_bytes: int | None = None,
                 keep_free: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync, self.segment_bytes, self.keep_free = fsync, segment_bytes, keep_free
        self.segment = max(self.segments() + self._free(), default=-1) + 1
        self._open()

    def _open(self) -> None:
        path, free = self._path(self.segment), self._free()
        if free:
            os.replace(self._path(free[0], "free"), path)
            self._file = open(path, "r+b", buffering=0)  # from offset 0, over the old contents
        else:
            self._file = open(path, "wb", buffering=0)
        self._file.write(_SEGMENT_HEAD.pack(SEGMENT_MAGIC, self.segment))
        self._seed = _crc_seed(self.segment)
        self.bytes_in_segment = _SEGMENT_HEAD.size

    def _path(self, index: int, kind: str = "seg") -> Path:
        return self.directory / f"{kind}_{index:06d}.log"

    def segments(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in self.directory.glob("seg_*.log"))

    def _free(self) -> list[int]:
        return sorted(int(p.stem[5:]) for p in self.directory.glob("free_*.log"))

    def append(self, frames: list[Any]) -> int:
        """Write one record; returns the index of the segment that holds it."""
        views = _views(frames)
        index = struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views))
        length = len(index) + sum(v.nbytes for v in views)
        holds_records = self.bytes_in_segment > _SEGMENT_HEAD.size
        if (self.segment_bytes is not None and holds_records
                and self.bytes_in_segment + _RECORD_HEAD.size + length > self.segment_bytes):
            self.rotate()
        head_crc = zlib.crc32(views[0], zlib.crc32(index, self._seed))
        body_crc, flags = 0, 0
        if self.fsync:
            body_crc, flags = head_crc, _BODY_CHECKED
            for view in views[1:]:
                body_crc = zlib.crc32(view, body_crc)
        _write_all(self._file.fileno(), [memoryview(_RECORD_HEAD.pack(length, head_crc, body_crc, flags)),
                                         memoryview(index), *views])
        self.bytes_in_segment += _RECORD_HEAD.size + length
        return self.segment

    def sync(self) -> None:
        if self.fsync:
            os.fsync(self._file.fileno())

    def rotate(self) -> int:
        """Close the current segment and start the next; returns the new segment's index."""
        self.sync()
        self._file.close()
        self.segment += 1
        self._open()
        return self.segment

    def drop_before(self, index: int) -> None:
        """Drop segments older than ``index`` (their contents live on in a checkpoint or were acked)."""
        free = len(self._free())
        for old in self.segments():
            if old < index and old != self.segment:
                if free < self.keep_free:
                    os.replace(self._path(old), self._path(old, "free"))
                    free += 1
                else:
                    self._path(old).unlink(missing_ok=True)

    def read(self, first_segment: int = 0) -> Iterator[tuple[int, list[memoryview]]]:
        """Every intact record in this log's segments ``>= first_segment`` (:func:`read_records`)."""
        return read_records(self.directory, first_segment)

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()
        for index in self._free():
            self._path(index, "free").unlink(missing_ok=True)


def read_records(directory: str | os.PathLike, first_segment: int = 0) -> Iterator[tuple[int, list[memoryview]]]:
    """Yield ``(segment, frames)`` of every intact record of a :class:`RecordLog` folder, oldest first.

    A record whose length or checks do not hold ends its segment: its writer died while writing
    it, so it was never acknowledged (or it is what a recycled file held before).
    """
    directory = Path(directory)
    for index in sorted(int(p.stem[4:]) for p in directory.glob("seg_*.log")):
        if index < first_segment:
            continue
        path = directory / f"seg_{index:06d}.log"
        data = memoryview(path.read_bytes())
        if len(data) < _SEGMENT_HEAD.size:
            continue  # its writer died before writing anything
        magic, written_index = _SEGMENT_HEAD.unpack_from(data)
        if magic != SEGMENT_MAGIC:
            raise HilrlError(f"{path} is not a log of this hilrl version (it lacks {SEGMENT_MAGIC!r}); finish or "
                             "discard that run with the hilrl that wrote it")
        if written_index != index:
            continue  # a recycled file whose writer died before naming it: nothing of this segment was written
        seed, offset = _crc_seed(index), _SEGMENT_HEAD.size
        while offset + _RECORD_HEAD.size <= len(data):
            length, head_crc, body_crc, flags = _RECORD_HEAD.unpack_from(data, offset)
            payload = data[offset + _RECORD_HEAD.size: offset + _RECORD_HEAD.size + length]
            layout = _frame_index(payload) if len(payload) == length else None
            if layout is None:
                break
            start, sizes = layout
            if zlib.crc32(payload[start:start + sizes[0]], zlib.crc32(payload[:start], seed)) != head_crc:
                break
            if flags & _BODY_CHECKED and zlib.crc32(payload[start + sizes[0]:], head_crc) != body_crc:
                break
            yield index, _unpack(payload, start, sizes)
            offset += _RECORD_HEAD.size + length
