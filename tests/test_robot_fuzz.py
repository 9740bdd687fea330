"""Fuzz a running robot server (sim arm): it keeps answering, and its commanded target never leaves the box.

The default run sends 2000 messages; ``-m slow`` adds a 30000-message run.
The mix: random bytes, random msgpack, malformed array maps, NaN/inf, wrong
types and shapes, oversized and many-frame messages, huge and out-of-box
targets, valid steps that push against the walls, and every other op.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
import yaml
import zmq

from hardware.server import CONFIG_DIR
from hardware.testing import running_server
from hilrl.envs.protocol import EXT_FRAME, EXT_INLINE, PROTOCOL_VERSION, array_header, decode, encode, request
from hilrl.envs.remote import RobotClient, StateSubscriber

FILE_CONFIG = yaml.safe_load((CONFIG_DIR / "sim.yaml").read_text())
BOX_LOW = np.array(FILE_CONFIG["limits"]["workspace_low"])
BOX_HIGH = np.array(FILE_CONFIG["limits"]["workspace_high"])
MAX_BYTES = FILE_CONFIG["max_message_bytes"]


def _junk_value(rng: np.random.Generator, depth: int = 0):
    kind = rng.integers(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(rng.integers(0, 2))
    if kind == 2:
        return int(rng.integers(-(2**63), 2**63 - 1))
    if kind == 3:
        return float(rng.choice([np.nan, np.inf, -np.inf, 1e308, -0.0, rng.normal() * 10.0 ** rng.integers(-5, 30)]))
    if kind == 4:
        return "".join(chr(c) for c in rng.integers(1, 0x2FFF, size=rng.integers(0, 20)))
    if kind == 5:
        return rng.bytes(int(rng.integers(0, 40)))
    if kind == 6:
        return [_junk_value(rng, depth + 1) for _ in range(rng.integers(0, 5))]
    if kind == 7:
        return {str(_junk_value(rng, 3)): _junk_value(rng, depth + 1) for _ in range(rng.integers(0, 5))}
    return msgpack.ExtType(int(rng.integers(0, 4)), rng.bytes(int(rng.integers(0, 30))))  # array-like junk


def _vector(rng: np.random.Generator, length: int, scale: float):
    """A numeric vector in a random wire form (list or array of some dtype), sometimes poisoned."""
    values = rng.normal(size=length) * scale
    if length and rng.random() < 0.2:
        values[rng.integers(0, length)] = rng.choice([np.nan, np.inf, -np.inf])
    form = rng.integers(0, 5)
    if form == 0:
        return values.tolist()
    if form == 1:
        return values.astype(np.float32)
    if form == 2:
        with np.errstate(invalid="ignore"):  # NaN cast to int is part of the junk
            return values.astype(rng.choice([np.int8, np.uint8, np.int64, np.bool_]))
    if form == 3:
        return values.reshape(-1, 1) if length > 1 else values
    return values


def _message(rng: np.random.Generator, ee_pos: np.ndarray, request_id: int) -> list[bytes]:
    """One fuzz message as frames (without the DEALER's empty delimiter)."""
    kind = int(rng.integers(0, 16))
    if kind == 0:  # random bytes
        return [rng.bytes(int(rng.integers(0, 300)))]
    if kind == 1:  # random msgpack
        return [msgpack.packb(_junk_value(rng), use_bin_type=True)]
    if kind == 2:  # a map of random fields with a real op
        fields = {str(_junk_value(rng, 3)): _junk_value(rng) for _ in range(rng.integers(0, 4))}
        return [msgpack.packb({"v": PROTOCOL_VERSION, "op": str(rng.choice(["step", "reset", "set_limits", "hello"])), "id": request_id, **fields})]
    if kind == 3:  # header fields of the wrong type
        return [msgpack.packb({"v": _junk_value(rng), "op": _junk_value(rng), "id": _junk_value(rng)})]
    if kind == 4:  # oversized
        return [msgpack.packb({"v": 1, "op": "step", "id": request_id, "delta": [0.0] * 3, "gripper": 0.0, "pad": rng.bytes(int(rng.integers(MAX_BYTES, 4 * MAX_BYTES)))})]
    if kind == 5:  # too many frames, or dangling array frames
        reference = msgpack.ExtType(EXT_FRAME, array_header("<f8", [3]) + struct.pack("<I", int(rng.integers(1, 30))))
        header = msgpack.packb({"v": 1, "op": "step", "id": request_id, "delta": reference, "gripper": 0.0})
        return [header] + [rng.bytes(24) for _ in range(rng.integers(0, 20))]
    if kind == 6:  # array maps that lie about their size or dtype
        dtype = str(rng.choice(["<f8", "<f4", "|O", ">f8", "<c16", "|u1", "float", ""]))
        shape = [int(n) for n in rng.integers(0, 4, size=rng.integers(0, 6))]
        payload = array_header(dtype, shape) + rng.bytes(int(rng.integers(0, 40)))
        if rng.random() < 0.3:
            payload = payload[: rng.integers(0, len(payload) + 1)]  # cut short
        spec = msgpack.ExtType(int(rng.choice([EXT_INLINE, EXT_FRAME, 9])), payload)
        return [msgpack.packb({"v": 1, "op": "step", "id": request_id, "delta": spec, "gripper": 0.0})]
    if kind == 7:  # deltas of wrong shape/dtype/values
        fields = {"delta": _vector(rng, int(rng.choice([0, 1, 2, 3, 3, 4, 6, 7])), 0.05), "gripper": _junk_value(rng) if rng.random() < 0.3 else float(rng.uniform(-1.5, 1.5))}
    elif kind == 8:  # huge jumps
        fields = {"delta": (rng.normal(size=3) * 10 ** rng.uniform(-1, 30)).tolist(), "gripper": 0.0}
    elif kind == 9:  # absolute targets anywhere, including far outside the box
        fields = {"target": (ee_pos + rng.normal(size=3) * rng.choice([0.01, 0.05, 1.0, 1e6])).tolist(), "gripper": 1.0}
    elif kind in (10, 11, 12):  # valid steps that lean on a wall of the box
        direction = np.sign(rng.normal(size=3)) * rng.uniform(0.5, 1.0, size=3)
        fields = {"delta": (0.05 * direction).tolist(), "gripper": float(rng.uniform(-1, 1))}
        if rng.random() < 0.2:
            fields["delta"] = fields["delta"] + (rng.uniform(-0.2, 0.2, size=3)).tolist()  # with a rotation
    elif kind == 13:  # set_limits, tightening or trying to loosen
        low = BOX_LOW + rng.uniform(-0.1, 0.1, size=3)
        high = BOX_HIGH + rng.uniform(-0.1, 0.1, size=3)
        return encode(request("set_limits", request_id, workspace_low=low, workspace_high=high))
    elif kind == 14:
        op = str(rng.choice(["reset", "get_state", "hello", "resume", "hold", "clear_error", "estop"], p=[0.2, 0.3, 0.1, 0.1, 0.1, 0.15, 0.05]))
        fields = {"seed": int(rng.integers(0, 2**31))} if op == "reset" else {}
        return encode(request(op, request_id, **fields))
    else:  # valid step from the arm's position
        fields = {"delta": rng.uniform(-0.05, 0.05, size=3), "gripper": float(rng.uniform(-1, 1))}
    return encode(request("step", request_id, **fields))


def _check_state(state, box_low=BOX_LOW, box_high=BOX_HIGH) -> None:
    """The last commanded target lies in the box that was in force (the file's, or a tighter one)."""
    assert np.all(np.isfinite(state["ee_pos"]))
    commanded = state["commanded_pos"]
    if commanded is not None:
        assert np.all(commanded >= box_low) and np.all(commanded <= box_high), (commanded, box_low, box_high)


def _fuzz(tmp_path, count: int, seed: int) -> dict[str, int]:
    config = dict(FILE_CONFIG, sim={**FILE_CONFIG["sim"], "realtime": False})
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(config))
    rng = np.random.default_rng(seed)
    tally = {"sent": 0, "ok": 0, "refused": 0, "steps_moved": 0, "stream_checked": 0}
    with running_server("--config", str(path)) as server:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(server.command_address)
        stream = StateSubscriber(server.stream_address)
        client = RobotClient(server.command_address, timeout_s=10)
        try:
            ee_pos = client.call("reset", seed=0)["state"]["ee_pos"]
            box_low, box_high = BOX_LOW.copy(), BOX_HIGH.copy()
            for request_id in range(1, count + 1):
                frames = _message(rng, ee_pos, request_id)
                socket.send_multipart([b"", *frames])
                tally["sent"] += 1
                assert socket.poll(10_000), f"server stopped answering after {tally['sent']} messages"
                answer = decode(socket.recv_multipart()[1:])
                tally["ok" if answer["ok"] else "refused"] += 1
                if answer["ok"] and "limits" in answer:
                    box_low = np.array(answer["limits"]["workspace_low"])
                    box_high = np.array(answer["limits"]["workspace_high"])
                moved = answer["ok"] and "clipped" in answer
                tally["steps_moved"] += moved
                # A tightened box binds the commands made after it; the file's box binds all of them.
                _check_state(answer["state"], *((box_low, box_high) if moved else (BOX_LOW, BOX_HIGH)))
                ee_pos = answer["state"]["ee_pos"]
                if answer["status"]["mode"] == "estop" and rng.random() < 0.5:
                    client.call("clear_error")
                while stream.socket.poll(0):
                    _check_state(stream.recv(0)["state"])
                    tally["stream_checked"] += 1
            assert client.call("hello")["ok"], "still serving after the fuzz"
            assert server.process.poll() is None
        finally:
            socket.close()
            stream.close()
            client.close()
        assert server.stop() == 0
    print(f"fuzz: {tally}")
    return tally


def test_fuzz_2000_messages(tmp_path):
    tally = _fuzz(tmp_path, count=2000, seed=0)
    assert tally["sent"] == 2000 and tally["ok"] + tally["refused"] == 2000
    # The mix is not degenerate: plenty refused, and the arm really moved under valid steps.
    assert tally["refused"] > 500 and tally["steps_moved"] > 100, tally


@pytest.mark.slow
def test_fuzz_30000_messages(tmp_path):
    tally = _fuzz(tmp_path, count=30_000, seed=1)
    assert tally["ok"] + tally["refused"] == 30_000 and tally["steps_moved"] > 1000, tally
