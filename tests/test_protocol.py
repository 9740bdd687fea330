"""Robot protocol: encoding, request validation, safety limits, robot config and CurveZMQ key files."""

from __future__ import annotations

import stat
import struct

import msgpack
import numpy as np
import pytest
import zmq

from hardware.limits import CommandRejected, RobotConfigError, SafetyLimits, load_config, safe_target
from hilrl.envs import auth
from hilrl.envs.protocol import (
    EXT_FRAME,
    EXT_INLINE,
    INLINE_ARRAY_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    array_header,
    decode,
    encode,
    request,
    space_from_wire,
    space_to_wire,
    validate_request,
    validate_reward_term_names,
    validate_reward_terms,
)

LIMITS = SafetyLimits(
    workspace_low=(0.25, -0.3, 0.015),
    workspace_high=(0.75, 0.3, 0.45),
    max_translation_per_step=0.05,
    max_rotation_per_step=0.2,
)


# ---------------------------------------------------------------- encoding


def test_round_trip_keeps_values_dtypes_and_shapes():
    image = np.arange(128 * 128 * 3, dtype=np.uint8).reshape(128, 128, 3)
    message = {
        "small": np.array([1.5, -2.0, 3.25], dtype=np.float32),
        "image": image,
        "nested": {"ints": np.arange(6, dtype=np.int64).reshape(2, 3), "flag": np.array([True, False])},
        "scalar": np.float32(0.5),
        "text": "hello",
        "none": None,
    }
    frames = encode(message)
    assert len(frames) == 2, "only the image is big enough for its own frame"
    assert np.shares_memory(frames[1], image), "big arrays are handed to zmq as they are, not copied"
    out = decode([bytes(memoryview(f)) for f in frames])
    assert out["small"].dtype == np.float32 and out["small"].tolist() == [1.5, -2.0, 3.25]
    assert out["image"].dtype == np.uint8 and np.array_equal(out["image"], image)
    assert out["nested"]["ints"].shape == (2, 3) and out["nested"]["flag"].tolist() == [True, False]
    assert out["scalar"] == 0.5 and out["text"] == "hello" and out["none"] is None


def test_big_arrays_decode_as_views_of_their_frame():
    image = np.full((64, 64, 3), 7, dtype=np.uint8)
    frames = encode({"image": image})
    buffer = bytearray(memoryview(frames[1]))
    out = decode([frames[0], buffer])
    buffer[0] = 99  # the decoded array shares memory with the received frame (no copy)
    assert out["image"][0, 0, 0] == 99


def test_inline_threshold():
    small = np.zeros(INLINE_ARRAY_BYTES // 8 - 1)
    big = np.zeros(INLINE_ARRAY_BYTES // 8)
    assert len(encode({"a": small})) == 1
    assert len(encode({"a": big})) == 2


def test_encode_refuses_objects_it_cannot_describe():
    with pytest.raises(TypeError, match="cannot send an array of dtype object"):
        encode({"a": np.array([object()])})
    with pytest.raises(TypeError, match="cannot encode a set"):
        encode({"a": {1, 2}})


def _ext(code, payload):
    return [msgpack.packb({"a": msgpack.ExtType(code, payload)})]


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "empty message"),
        ([b"\xc1"], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a msgpack map"),
        ([msgpack.packb({1: 2})], "not valid msgpack"),
        (_ext(EXT_INLINE, array_header("|O", [1]) + b"\0" * 8), "dtype '|O' not allowed"),
        (_ext(EXT_INLINE, array_header(">f8", [1]) + b"\0" * 8), "dtype '>f8' not allowed"),
        (_ext(EXT_INLINE, array_header("<f8", [2]) + b"\0" * 8), "needs 16 bytes of data, got 8"),
        (_ext(EXT_INLINE, array_header("<f8", [1, 1, 1, 1, 1]) + b"\0" * 8), "at most 4"),
        (_ext(EXT_FRAME, array_header("<f8", [1]) + struct.pack("<I", 1)), "refers to frame 1"),
        (_ext(EXT_FRAME, array_header("<f8", [1])), "must end with a uint32 frame index"),
        (_ext(EXT_INLINE, b"\x05ab"), "cut short"),
        (_ext(EXT_INLINE, b""), "cut short"),
        (_ext(EXT_INLINE, b"\x02\xff\xfe\x00"), "garbled"),
        (_ext(7, b"\0"), "unknown msgpack extension type 7"),
    ],
)
def test_decode_rejects_malformed_frames(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_decode_enforces_size_limit():
    frames = encode({"a": np.zeros(1000)})
    with pytest.raises(ProtocolError, match="over the 4000-byte limit"):
        decode(frames, max_bytes=4000)


def test_spaces_survive_the_wire():
    from gymnasium import spaces

    space = spaces.Dict(
        {"ee_pos": spaces.Box(-np.inf, np.inf, (3,), np.float32), "front": spaces.Box(0, 255, (8, 8, 3), np.uint8)}
    )
    rebuilt = space_from_wire(decode(encode(space_to_wire(space))))
    assert rebuilt == space


# ---------------------------------------------------------------- requests


def _wire(message):
    return decode(encode(message))


def test_valid_requests_are_typed():
    step = validate_request(_wire(request("step", 7, delta=np.array([0.01, 0.0, -0.02], np.float32), gripper=1)))
    assert step.op == "step" and step.id == 7 and step.gripper == 1.0
    assert step.delta.dtype == np.float64 and step.delta.shape == (3,)
    assert validate_request(_wire(request("step", target=[0.5, 0.0, 0.2], gripper=-1.0))).target.tolist() == [0.5, 0.0, 0.2]
    assert validate_request(_wire(request("reset", seed=3))).seed == 3
    assert validate_request(_wire(request("reset"))).seed is None
    assert validate_request(_wire(request("get_state", images=False))).images is False
    limits = validate_request(_wire(request("set_limits", max_translation_per_step=0.01))).limits
    assert limits == {"max_translation_per_step": 0.01}
    for op in ("hello", "estop", "clear_error", "resume", "hold"):
        assert validate_request(_wire(request(op))).op == op


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"op": "hello"}, "protocol version None"),
        ({"v": PROTOCOL_VERSION + 1, "op": "hello"}, "protocol version 2"),
        ({"v": True, "op": "hello"}, "protocol version True"),
        (request("fly"), "unknown op 'fly'"),
        (request("hello", -1), "'id' must be a non-negative"),
        (request("hello", extra=1), r"does not take field\(s\) \['extra'\]; allowed: task"),
        (request("reset", seed=-1), "'seed' must be null or an int"),
        (request("reset", seed=1.5), "'seed' must be null or an int"),
        (request("step", gripper=0.0), "exactly one of 'delta'"),
        (request("step", delta=[0, 0, 0], target=[0, 0, 0], gripper=0.0), "exactly one of 'delta'"),
        (request("step", delta=[0, 0, 0]), "needs field 'gripper'"),
        (request("step", delta=[0, 0], gripper=0.0), r"shape \(3 or 6,\)"),
        (request("step", target=[0, 0, 0, 0, 0, 0], gripper=0.0), r"shape \(3,\)"),
        (request("step", delta=[0, float("nan"), 0], gripper=0.0), "finite numbers"),
        (request("step", delta=np.array([0, np.inf, 0]), gripper=0.0), "finite numbers"),
        (request("step", delta=np.zeros((3, 1)), gripper=0.0), r"shape \(3 or 6,\)"),
        (request("step", delta=np.array([True, False, True]), gripper=0.0), "numeric array"),
        (request("step", delta="abc", gripper=0.0), "numeric array or list"),
        (request("step", delta=[0, "x", 0], gripper=0.0), "numeric array or list"),
        (request("step", delta=[0, 0, 0], gripper=True), "'gripper' must be a number"),
        (request("step", delta=[0, 0, 0], gripper=float("inf")), "'gripper' must be finite"),
        (request("get_state", images=1), "'images' must be true or false"),
        (request("set_limits"), "needs at least one"),
    ],
)
def test_invalid_requests_name_the_problem(message, match):
    with pytest.raises(ProtocolError, match=match):
        validate_request(_wire(message))


def test_hello_may_ask_for_a_task_and_its_settings():
    asked = {"id": "hilrl/PickCube-v0", "cameras": ["front"], "image_size": 64, "control_hz": 10,
             "use_rotation": False, "max_episode_steps": 120, "terminate_on_success": True, "reward_type": "dense"}
    hello = validate_request(_wire(request("hello", task=asked)))
    assert hello.task == {**asked, "control_hz": 10.0} and type(hello.task["control_hz"]) is float
    assert validate_request(_wire(request("hello"))).task is None


@pytest.mark.parametrize(
    ("task", "match"),
    [
        ("hilrl/Reach-v0", "'task' must be a map"),
        ({"id": "hilrl/Reach-v0", "action_scale": 1.0}, r"does not take \['action_scale'\]"),
        ({"id": 3}, "'task.id' must be a string"),
        ({"id": "x" * 65}, "'task.id' must be a string of 1 to 64"),
        ({"cameras": "front"}, "'task.cameras' must be a list"),
        ({"cameras": ["front", 1]}, "'task.cameras' must be a string"),
        ({"cameras": ["front"] * 5}, "at most 4 camera names"),
        ({"image_size": 0}, r"'task.image_size' must be an int in \[1, 1024\]"),
        ({"image_size": 64.0}, "'task.image_size' must be an int"),
        ({"max_episode_steps": True}, "'task.max_episode_steps' must be an int"),
        ({"control_hz": float("nan")}, "'task.control_hz' must be finite"),
        ({"control_hz": -10.0}, "'task.control_hz' must be positive"),
        ({"use_rotation": 1}, "'task.use_rotation' must be true or false"),
        ({"reward_type": None}, "'task.reward_type' must be a string"),
    ],
)
def test_bad_task_requests_name_the_problem(task, match):
    with pytest.raises(ProtocolError, match=match):
        validate_request(_wire(request("hello", task=task)))


def test_reward_terms_are_bounded_maps_of_finite_numbers():
    assert validate_reward_terms(_wire({"t": {"reach": 0.5, "grasped": 1}})["t"]) == {"reach": 0.5, "grasped": 1.0}
    assert validate_reward_term_names(["reach", "grasped"]) == ("reach", "grasped")
    for terms, match in [
        ([0.5], "must be a map"),
        ({f"t{i}": 0.0 for i in range(17)}, "at most 16"),
        ({"": 0.0}, "names must be strings of 1 to 64"),
        ({"goal-distance": 0.0}, "must be identifiers"),
        ({"reach": float("nan")}, "'reach' must be a finite number"),
        ({"reach": float("inf")}, "'reach' must be a finite number"),
        ({"reach": True}, "'reach' must be a finite number"),
        ({"reach": "0.5"}, "'reach' must be a finite number"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            validate_reward_terms(terms)
    for names, match in [("reach", "must be a list"), (["a", "a"], "distinct"), ([1], "must be a string"),
                         ([f"t{i}" for i in range(17)], "at most 16")]:
        with pytest.raises(ProtocolError, match=match):
            validate_reward_term_names(names)


def test_sim_config_lists_the_tasks_a_client_may_ask_for(tmp_path):
    from hardware.server import CONFIG_DIR

    shipped = load_config(CONFIG_DIR / "sim.yaml").sim
    assert shipped.task == "hilrl/Reach-v0" and shipped.tasks is None  # any hilrl task, Reach until asked
    path = tmp_path / "robot.yaml"
    path.write_text("limits: {workspace_low: [0, 0, 0], workspace_high: [1, 1, 1], max_translation_per_step: 0.05}\n"
                    "sim: {task: hilrl/Push-v0, tasks: [hilrl/Reach-v0]}\n")
    with pytest.raises(RobotConfigError, match=r"sim.task 'hilrl/Push-v0' is not in sim.tasks \['hilrl/Reach-v0'\]"):
        load_config(path)


# ---------------------------------------------------------------- limits


def _step(**fields):
    return validate_request(_wire(request("step", gripper=fields.pop("gripper", 0.0), **fields)))


def test_delta_inside_the_box_passes_unchanged():
    ee = np.array([0.5, 0.0, 0.2])
    target, delta, clipped = safe_target(_step(delta=[0.05, -0.05, 0.01]), ee, LIMITS)
    assert not clipped and delta.tolist() == [0.05, -0.05, 0.01]
    np.testing.assert_allclose(target, [0.55, -0.05, 0.21])


def test_target_is_clipped_into_the_box():
    ee = np.array([0.74, 0.29, 0.02])
    target, delta, clipped = safe_target(_step(delta=[0.05, 0.05, -0.05]), ee, LIMITS)
    assert clipped
    np.testing.assert_allclose(target, [0.75, 0.3, 0.015])
    np.testing.assert_allclose(delta, target - ee)


def test_jumps_rotations_and_gripper_out_of_range_are_refused():
    ee = np.array([0.5, 0.0, 0.2])
    with pytest.raises(CommandRejected, match="over max_translation_per_step"):
        safe_target(_step(delta=[0.0, 0.06, 0.0]), ee, LIMITS)
    with pytest.raises(CommandRejected, match="over max_translation_per_step"):
        safe_target(_step(target=[0.6, 0.0, 0.2]), ee, LIMITS)
    with pytest.raises(CommandRejected, match="over max_rotation_per_step"):
        safe_target(_step(delta=[0, 0, 0, 0.0, 0.3, 0.0]), ee, LIMITS)
    with pytest.raises(CommandRejected, match=r"gripper=1.5 outside \[-1.0, 1.0\]"):
        safe_target(_step(delta=[0, 0, 0], gripper=1.5), ee, LIMITS)


def test_limits_can_only_be_tightened():
    tighter = LIMITS.tightened({"workspace_high": np.array([0.6, 0.2, 0.4]), "max_translation_per_step": 0.01}, within=LIMITS)
    assert tighter.workspace_high == (0.6, 0.2, 0.4) and tighter.max_translation_per_step == 0.01
    # Back to the file's values is allowed; past them is not.
    assert LIMITS.tightened({"max_translation_per_step": 0.05}, within=LIMITS).max_translation_per_step == 0.05
    with pytest.raises(CommandRejected, match="outside the configured box"):
        LIMITS.tightened({"workspace_low": np.array([0.0, -0.3, 0.015])}, within=LIMITS)
    with pytest.raises(CommandRejected, match="loosens"):
        LIMITS.tightened({"max_rotation_per_step": 1.0}, within=LIMITS)
    with pytest.raises(CommandRejected, match="loosens"):
        LIMITS.tightened({"gripper_min": -2.0}, within=LIMITS)
    with pytest.raises(CommandRejected, match="bad limits"):
        LIMITS.tightened({"workspace_high": np.array([0.3, 0.2, 0.4]), "workspace_low": np.array([0.4, -0.3, 0.015])}, within=LIMITS)


def test_shipped_configs_load():
    from hardware.server import CONFIG_DIR

    for name in ("sim", "kinematic", "franka", "ur"):
        config = load_config(CONFIG_DIR / f"{name}.yaml")
        assert config.driver == name and config.watchdog_timeout_s == 0.2


def test_config_errors_name_file_and_field(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("driver: sim\nlimits:\n  workspace_low: [0, 0, 0]\n  workspace_high: [1, 1, -1]\n  max_translation_per_step: 0.05\n")
    with pytest.raises(RobotConfigError, match=r"robot.yaml: field 'limits'.*below workspace_high"):
        load_config(path)
    path.write_text("driver: sim\nwatchdog_timeout_s: -1\nlimits: {}\n")
    with pytest.raises(RobotConfigError, match="field 'watchdog_timeout_s'"):
        load_config(path)
    path.write_text("speed: 3\n")
    with pytest.raises(RobotConfigError, match="field 'limits'"):
        load_config(path)
    with pytest.raises(RobotConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- keys


def test_generated_keys_load_and_secret_is_private(tmp_path):
    public_path, secret_path = auth.generate_keypair(tmp_path / "keys", "robot")
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    public, secret = auth.load_keypair(secret_path)
    assert auth.load_public_key(public_path) == public and len(secret) == 40
    assert zmq.curve_public(secret) == public
    assert auth.allowed_public_keys(tmp_path / "keys") == [public]
    with pytest.raises(auth.KeyFileError, match="already exists"):
        auth.generate_keypair(tmp_path / "keys", "robot")
    with pytest.raises(auth.KeyFileError, match="holds no secret key"):
        auth.load_keypair(public_path)
    with pytest.raises(auth.KeyFileError, match="not found"):
        auth.load_public_key(tmp_path / "nope.key")
    with pytest.raises(auth.KeyFileError, match="plain file name"):
        auth.generate_keypair(tmp_path, "../evil")
    (tmp_path / "bad.key").write_text("not a certificate\n")
    with pytest.raises(auth.KeyFileError, match="bad.key"):
        auth.load_public_key(tmp_path / "bad.key")


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("ipc:///tmp/robot", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.4:5555", False),
    ],
)
def test_loopback_detection(address, loopback):
    assert auth.is_loopback(address) is loopback
