"""Wire format of the robot link (``hardware/PROTOCOL.md``, version 1).

A message is a ZeroMQ multipart message. Frame 0 is a msgpack map (the
header). A numpy array inside it is a msgpack extension value: type
``EXT_INLINE`` carries dtype, shape and the raw bytes (small arrays); type
``EXT_FRAME`` carries dtype, shape and the index of a later frame that holds
the raw bytes (big arrays, sent zero-copy). Nothing is ever pickled: a
receiver only builds plain msgpack values and numpy arrays of an
allow-listed dtype.

This module is shared by both ends: ``hilrl.envs.remote`` (the client) and
``hardware.server`` (the robot side). It holds the encoding, the request
schema and its validation, and the reply layout. It imports no MuJoCo.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgpack
import numpy as np
import zmq

from hilrl.errors import HilrlError

PROTOCOL_VERSION = 1
EXT_INLINE = 1  # payload: array header + raw bytes
EXT_FRAME = 2  # payload: array header + uint32 index of the frame holding the raw bytes
# Arrays below this size travel inside the header: one frame is cheaper than two for a few floats.
INLINE_ARRAY_BYTES = 1024
MAX_ARRAY_NDIM = 4
# Little-endian numeric dtypes only: an object or structured dtype never reaches np.frombuffer.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)

OPS = ("hello", "reset", "step", "get_state", "set_limits", "estop", "clear_error", "resume", "hold")

# Robot modes reported in every reply's status (see PROTOCOL.md "State machine").
MODE_READY = "ready"  # accepts step; not moving, so the watchdog is idle
MODE_MOVING = "moving"  # a step arrived recently; the watchdog is armed
MODE_STOPPED = "stopped"  # watchdog fired; send `resume` or `reset`
MODE_ESTOP = "estop"  # latched; only `clear_error` leaves it
MODE_FAULT = "fault"  # the driver failed; only `clear_error` leaves it

# What a `hello` may ask a task-running driver (the sim) to serve: a task id and its settings.
HELLO_TASK_FIELDS = (
    "id", "cameras", "image_size", "control_hz", "use_rotation", "max_episode_steps", "terminate_on_success", "reward_type"
)
MAX_NAME_CHARS = 64  # task ids, camera names, reward types, reward term names
MAX_CAMERAS = 4
MAX_IMAGE_SIZE = 1024
MAX_EPISODE_STEPS = 10**7
MAX_REWARD_TERMS = 16

Frame = bytes | bytearray | memoryview | zmq.Frame | np.ndarray


class ProtocolError(HilrlError, ValueError):
    """A message that does not follow the protocol; the text says what and how to fix it."""


# ---------------------------------------------------------------------------- encoding

# Array headers seen before, both ways: a robot sends the same few shapes over and over.
_HEAD_CACHE: dict[tuple[str, tuple[int, ...]], bytes] = {}
_PARSE_CACHE: dict[bytes, tuple[str, tuple[int, ...], int, int]] = {}


def array_header(dtype: str, shape: Sequence[int]) -> bytes:
    """The start of an array extension payload: dtype (length-prefixed ASCII), ndim, shape as uint32."""
    encoded = dtype.encode("ascii")
    return bytes([len(encoded)]) + encoded + struct.pack(f"<B{len(shape)}I", len(shape), *shape)


# ExtType's own constructor re-checks types in Python (~1 us per array, several arrays per reply); our
# code and payload are an int and bytes by construction, so the tuple is built directly.
_ext = tuple.__new__


def encode(message: Mapping[str, Any], inline_array_bytes: int = INLINE_ARRAY_BYTES) -> list[Any]:
    """Encode ``message`` as frames: ``[header, big_array_0, big_array_1, ...]``.

    Big arrays are returned as the (contiguous) arrays themselves so that
    ``socket.send_multipart(frames, copy=False)`` sends them without a copy;
    do not modify them until the send has completed.
    """
    buffers: list[np.ndarray] = []

    def to_wire(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            if not obj.flags.c_contiguous:
                obj = np.ascontiguousarray(obj)
            key = (obj.dtype.str, obj.shape)
            head = _HEAD_CACHE.get(key)
            if head is None:
                if key[0] not in ALLOWED_DTYPES:
                    raise TypeError(f"cannot send an array of dtype {obj.dtype}; use one of {sorted(ALLOWED_DTYPES)}")
                head = array_header(*key)
                if len(_HEAD_CACHE) < 4096:
                    _HEAD_CACHE[key] = head
            if obj.nbytes < inline_array_bytes:
                return _ext(msgpack.ExtType, (EXT_INLINE, head + obj.tobytes()))
            buffers.append(obj)
            return _ext(msgpack.ExtType, (EXT_FRAME, head + struct.pack("<I", len(buffers))))
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"cannot encode a {type(obj).__name__}; send numbers, strings, lists, maps or numpy arrays")

    header = msgpack.packb(message, default=to_wire, use_bin_type=True)
    return [header, *buffers]


def _buffer(frame: Frame) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def decode(frames: Sequence[Frame], max_bytes: int | None = None) -> dict[str, Any]:
    """Decode frames made by :func:`encode` into a dict; raise :class:`ProtocolError` on any defect.

    Arrays are read-only views of the received bytes (no copy); copy them
    before writing into them.
    """
    if len(frames) == 0:
        raise ProtocolError("empty message: send at least the msgpack header frame")
    views = [_buffer(f) for f in frames]
    if max_bytes is not None:
        total = sum(v.nbytes for v in views)
        if total > max_bytes:
            raise ProtocolError(f"message of {total} bytes is over the {max_bytes}-byte limit; send smaller messages")

    def from_wire(code: int, payload: bytes) -> np.ndarray:
        return _array_from_wire(code, payload, views)

    try:
        message = msgpack.unpackb(views[0], ext_hook=from_wire, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types (ExtraData, StackError, ValueError, TypeError, ...)
        raise ProtocolError(f"header frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"header must be a msgpack map, got {type(message).__name__}")
    return message


def _array_from_wire(code: int, payload: bytes, views: list[memoryview]) -> np.ndarray:
    if code not in (EXT_INLINE, EXT_FRAME):
        raise ProtocolError(f"unknown msgpack extension type {code}; arrays use {EXT_INLINE} (inline) or {EXT_FRAME} (frame)")
    try:
        offset = 2 + payload[0] + 4 * payload[1 + payload[0]]
    except IndexError:
        raise ProtocolError("array header is cut short; it is [len, dtype, ndim, shape...]") from None
    key = payload[:offset]
    parsed = _PARSE_CACHE.get(key)
    if parsed is None:
        parsed = _parse_array_header(payload, offset)
        if len(_PARSE_CACHE) < 4096:
            _PARSE_CACHE[key] = parsed
    dtype, shape, count, expected = parsed
    if code == EXT_INLINE:
        data: Any = payload
        size = len(payload) - offset
    else:
        if len(payload) != offset + 4:
            raise ProtocolError("frame array must end with a uint32 frame index")
        (index,) = struct.unpack_from("<I", payload, offset)
        if not 1 <= index < len(views):
            raise ProtocolError(f"array refers to frame {index}, but the message has {len(views)} frames")
        data, offset, size = views[index], 0, views[index].nbytes
    if size != expected:
        raise ProtocolError(f"array of dtype {dtype} and shape {list(shape)} needs {expected} bytes of data, got {size}")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array if len(shape) == 1 else array.reshape(shape)


def _parse_array_header(payload: bytes, offset: int) -> tuple[str, tuple[int, ...], int, int]:
    name_length = payload[0]
    try:
        dtype = payload[1 : 1 + name_length].decode("ascii")
        ndim = payload[1 + name_length]
        shape = struct.unpack_from(f"<{ndim}I", payload, 2 + name_length)
    except (UnicodeDecodeError, struct.error):
        raise ProtocolError("array header is cut short or garbled; it is [len, dtype, ndim, shape...]") from None
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array dtype {dtype!r} not allowed; use one of {sorted(ALLOWED_DTYPES)}")
    if ndim > MAX_ARRAY_NDIM:
        raise ProtocolError(f"array has {ndim} dimensions; at most {MAX_ARRAY_NDIM}")
    count = math.prod(shape)
    return dtype, shape, count, count * _ITEMSIZE[dtype]


_ITEMSIZE = {name: np.dtype(name).itemsize for name in ALLOWED_DTYPES}


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    """A validated command. Only the fields of its ``op`` are set; vectors are float64 copies."""

    op: str
    id: int = 0
    seed: int | None = None
    delta: np.ndarray | None = None  # (3,) xyz metres, or (6,) xyz + roll/pitch/yaw radians
    target: np.ndarray | None = None  # (3,) absolute xyz metres in the robot base frame
    gripper: float | None = None
    images: bool = True
    limits: dict[str, Any] | None = None
    task: dict[str, Any] | None = None  # hello: the task and settings asked for (HELLO_TASK_FIELDS)


# Fields a request may carry beyond "v", "op" and "id".
_FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"task"}),
    "reset": frozenset({"seed"}),
    "step": frozenset({"delta", "target", "gripper"}),
    "get_state": frozenset({"images"}),
    "set_limits": frozenset(
        {"workspace_low", "workspace_high", "max_translation_per_step", "max_rotation_per_step", "gripper_min", "gripper_max"}
    ),
    "estop": frozenset(),
    "clear_error": frozenset(),
    "resume": frozenset(),
    "hold": frozenset(),
}


def request(op: str, request_id: int = 0, **fields: Any) -> dict[str, Any]:
    """Build a request map for ``op`` (client side); fields as in PROTOCOL.md."""
    return {"v": PROTOCOL_VERSION, "op": op, "id": request_id, **fields}


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass; a bool is never a number here


def _finite_float(name: str, value: Any) -> float:
    if not (_is_int(value) or type(value) is float):
        raise ProtocolError(f"field {name!r} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ProtocolError(f"field {name!r} must be finite, got {number}")
    return number


def _finite_vector(name: str, value: Any, lengths: tuple[int, ...]) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise ProtocolError(f"field {name!r} must be a numeric array, got dtype {value.dtype}")
        if value.ndim != 1:
            raise ProtocolError(f"field {name!r} must have shape ({' or '.join(map(str, lengths))},), got {value.shape}")
        numbers = value.tolist()
    elif isinstance(value, list) and all(_is_int(v) or type(v) is float for v in value):
        numbers = value
    else:
        raise ProtocolError(f"field {name!r} must be a numeric array or list of numbers, got {type(value).__name__}")
    if len(numbers) not in lengths:
        raise ProtocolError(f"field {name!r} must have shape ({' or '.join(map(str, lengths))},), got ({len(numbers)},)")
    # Plain-float checks: for a handful of numbers they beat numpy's per-call overhead.
    if not all(math.isfinite(v) for v in numbers):
        raise ProtocolError(f"field {name!r} must hold finite numbers, got {numbers}")
    return np.array(numbers, dtype=np.float64)


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_CHARS:
        raise ProtocolError(f"field {field!r} must be a string of 1 to {MAX_NAME_CHARS} characters, got {value!r}")
    return value


def _bounded_int(field: str, value: Any, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise ProtocolError(f"field {field!r} must be an int in [{low}, {high}], got {value!r}")
    return value


def _flag(field: str, value: Any) -> bool:
    if type(value) is not bool:
        raise ProtocolError(f"field {field!r} must be true or false, got {value!r}")
    return value


def _task_request(value: Any) -> dict[str, Any]:
    """Check hello's ``task`` map (form only; which tasks and settings are allowed is the server's call)."""
    if not isinstance(value, dict):
        raise ProtocolError(f"field 'task' must be a map with any of {', '.join(HELLO_TASK_FIELDS)}, got {type(value).__name__}")
    extra = sorted(set(value) - set(HELLO_TASK_FIELDS))
    if extra:
        raise ProtocolError(f"field 'task' does not take {extra}; allowed: {', '.join(HELLO_TASK_FIELDS)}")
    task: dict[str, Any] = {}
    for key, item in value.items():
        field = f"task.{key}"
        if key in ("id", "reward_type"):
            task[key] = _name(field, item)
        elif key == "cameras":
            if not isinstance(item, list) or len(item) > MAX_CAMERAS:
                raise ProtocolError(f"field {field!r} must be a list of at most {MAX_CAMERAS} camera names, got {item!r}")
            task[key] = [_name(field, name) for name in item]
        elif key == "image_size":
            task[key] = _bounded_int(field, item, 1, MAX_IMAGE_SIZE)
        elif key == "max_episode_steps":
            task[key] = _bounded_int(field, item, 1, MAX_EPISODE_STEPS)
        elif key == "control_hz":
            task[key] = _finite_float(field, item)
            if not task[key] > 0:
                raise ProtocolError(f"field {field!r} must be positive, got {item!r}")
        else:  # use_rotation, terminate_on_success
            task[key] = _flag(field, item)
    return task


def _identifier(name: str) -> str:
    """Reward term names become config keys (``reward: {source: term, term: NAME}``) and dataset names."""
    if not name.isidentifier():
        raise ProtocolError(f"reward term names must be identifiers (letters, digits, _), got {name!r}")
    return name


def validate_reward_term_names(names: Any) -> tuple[str, ...]:
    """Check the ``reward_terms`` names of a hello's info: at most MAX_REWARD_TERMS distinct strings."""
    if not isinstance(names, (list, tuple)) or len(names) > MAX_REWARD_TERMS:
        raise ProtocolError(f"'reward_terms' must be a list of at most {MAX_REWARD_TERMS} names, got {names!r}")
    checked = tuple(_identifier(_name("reward_terms", name)) for name in names)
    if len(set(checked)) != len(checked):
        raise ProtocolError(f"'reward_terms' names must be distinct, got {list(checked)}")
    return checked


def validate_reward_terms(terms: Any) -> dict[str, float]:
    """Check a task state's ``reward_terms``: a map of at most MAX_REWARD_TERMS names to finite numbers.

    Returns a new dict of plain floats (ints become floats); raises :class:`ProtocolError`.
    """
    if not isinstance(terms, dict) or len(terms) > MAX_REWARD_TERMS:
        raise ProtocolError(f"'reward_terms' must be a map of at most {MAX_REWARD_TERMS} names to numbers, got {terms!r}")
    checked: dict[str, float] = {}
    for name, value in terms.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ProtocolError(f"'reward_terms' names must be strings of 1 to {MAX_NAME_CHARS} characters, got {name!r}")
        _identifier(name)
        if not (type(value) is float or _is_int(value)) or not math.isfinite(value):
            raise ProtocolError(f"reward term {name!r} must be a finite number, got {value!r}")
        checked[name] = float(value)
    return checked


def validate_request(message: Mapping[str, Any]) -> Request:
    """Check a decoded request against the schema; return it typed or raise :class:`ProtocolError`.

    This checks form only (types, shapes, finite numbers). Limits (workspace
    box, jump size, gripper range) are the robot server's job.
    """
    version = message.get("v")
    if version != PROTOCOL_VERSION or not _is_int(version):
        raise ProtocolError(f"protocol version {version!r} not supported; this server speaks v={PROTOCOL_VERSION}")
    op = message.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        raise ProtocolError(f"unknown op {op!r}; use one of {', '.join(OPS)}")
    request_id = message.get("id", 0)
    if not _is_int(request_id) or not 0 <= request_id < 2**63:
        raise ProtocolError("field 'id' must be a non-negative 64-bit int")
    extra = set(message) - {"v", "op", "id"} - _FIELDS[op]
    if extra:
        allowed = ", ".join(sorted(_FIELDS[op])) or "none"
        raise ProtocolError(f"op {op!r} does not take field(s) {sorted(extra)}; allowed: {allowed}")

    if op == "hello":
        return Request(op, request_id, task=_task_request(message["task"]) if "task" in message else None)
    if op == "reset":
        seed = message.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**32):
            raise ProtocolError(f"field 'seed' must be null or an int in [0, 2**32), got {seed!r}")
        return Request(op, request_id, seed=seed)
    if op == "step":
        has_delta, has_target = "delta" in message, "target" in message
        if has_delta == has_target:
            raise ProtocolError("op 'step' needs exactly one of 'delta' (3 or 6 numbers) or 'target' (3 numbers)")
        if "gripper" not in message:
            raise ProtocolError("op 'step' needs field 'gripper' (a number)")
        delta = _finite_vector("delta", message["delta"], (3, 6)) if has_delta else None
        target = _finite_vector("target", message["target"], (3,)) if has_target else None
        return Request(op, request_id, delta=delta, target=target, gripper=_finite_float("gripper", message["gripper"]))
    if op == "get_state":
        images = message.get("images", True)
        if type(images) is not bool:
            raise ProtocolError("field 'images' must be true or false")
        return Request(op, request_id, images=images)
    if op == "set_limits":
        limits: dict[str, Any] = {}
        for name in _FIELDS["set_limits"]:
            if name not in message:
                continue
            if name.startswith("workspace"):
                limits[name] = _finite_vector(name, message[name], (3,))
            else:
                limits[name] = _finite_float(name, message[name])
        if not limits:
            raise ProtocolError(f"op 'set_limits' needs at least one of {sorted(_FIELDS['set_limits'])}")
        return Request(op, request_id, limits=limits)
    return Request(op, request_id)


# ---------------------------------------------------------------------------- replies


def reply(
    request_id: int,
    *,
    ok: bool,
    mode: str,
    reason: str | None,
    state: Mapping[str, Any] | None,
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a reply map. Every reply carries the robot's status and (when known) its state."""
    return {
        "v": PROTOCOL_VERSION,
        "id": request_id,
        "ok": ok,
        "error": error,
        "status": {"mode": mode, "reason": reason},
        "state": state,
        **extra,
    }


def space_to_wire(space: Any) -> dict[str, Any]:
    """Describe a gymnasium ``Box`` or ``Dict`` of boxes as msgpack-able data (for ``hello``)."""
    if hasattr(space, "spaces"):
        return {"type": "dict", "spaces": {key: space_to_wire(sub) for key, sub in space.spaces.items()}}
    return {
        "type": "box",
        "dtype": np.dtype(space.dtype).str,
        "shape": list(space.shape),
        "low": np.asarray(space.low),
        "high": np.asarray(space.high),
    }


def space_from_wire(spec: Mapping[str, Any]) -> Any:
    """Rebuild the gymnasium space described by :func:`space_to_wire`."""
    from gymnasium import spaces  # the robot side never needs gymnasium to encode

    if spec.get("type") == "dict":
        return spaces.Dict({key: space_from_wire(sub) for key, sub in spec["spaces"].items()})
    if spec.get("type") == "box":
        return spaces.Box(
            low=np.array(spec["low"]), high=np.array(spec["high"]), shape=tuple(spec["shape"]), dtype=np.dtype(spec["dtype"])
        )
    raise ProtocolError(f"unknown space description {spec.get('type')!r}")
