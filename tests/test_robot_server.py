"""The robot server as a real subprocess: watchdog, e-stop, bad input, limits, signals, CurveZMQ."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
import zmq

from hardware.server import CONFIG_DIR
from hardware.testing import REPO_ROOT, running_server
from hilrl.envs.protocol import decode, encode, request
from hilrl.envs.remote import RobotClient, RobotCommandError, RobotConnectionError, StateSubscriber


def _config(tmp_path, name: str = "sim", **changes) -> str:
    config = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())
    if name == "sim":
        config["sim"]["realtime"] = False  # tests step as fast as they can
    config.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _wait_for(predicate, timeout_s: float = 10.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("condition not reached")


def test_watchdog_holds_a_silenced_client_until_resume(tmp_path):
    with running_server("--config", _config(tmp_path, watchdog_timeout_s=0.2)) as server:
        client = RobotClient(server.command_address, timeout_s=10)
        stream = StateSubscriber(server.stream_address)
        try:
            client.call("reset", seed=0)
            moving = client.call("step", delta=[0.01, 0.0, 0.0], gripper=1.0)
            assert moving["status"] == {"mode": "moving", "reason": None}
            held_at = moving["state"]["ee_pos"].copy()
            # Silence: the server must stop the arm by itself and say why.
            stopped = _wait_for(lambda: (s := client.call("get_state"))["status"]["mode"] == "stopped" and s)
            assert stopped["status"]["reason"] == "watchdog"
            np.testing.assert_array_equal(stopped["state"]["ee_pos"], held_at)
            assert _wait_for(lambda: stream.recv(5.0)["status"] == {"mode": "stopped", "reason": "watchdog"})
            with pytest.raises(RobotCommandError, match="stopped.*watchdog.*send 'resume'") as refused:
                client.call("step", delta=[0.01, 0.0, 0.0], gripper=1.0)
            assert refused.value.status["mode"] == "stopped"
            np.testing.assert_array_equal(client.call("get_state")["state"]["ee_pos"], held_at)
            # The explicit command that re-enables motion is `resume` (or `reset`).
            assert client.call("resume")["status"]["mode"] == "ready"
            assert client.call("step", delta=[0.01, 0.0, 0.0], gripper=1.0)["status"]["mode"] == "moving"
            assert client.call("hold")["status"]["mode"] == "ready"  # an announced pause: no watchdog stop
        finally:
            client.close()
            stream.close()
        assert "watchdog: no command for 0.2s" in server.stderr_text()


def test_estop_latches_until_clear_error(tmp_path):
    with running_server("--config", _config(tmp_path, watchdog_timeout_s=5.0)) as server:
        client = RobotClient(server.command_address, timeout_s=10)
        try:
            client.call("reset", seed=1)
            assert client.call("estop")["status"] == {"mode": "estop", "reason": "estop: client request"}
            for op, fields in (("step", {"delta": [0.0, 0.0, 0.01], "gripper": 0.0}), ("reset", {}), ("resume", {})):
                with pytest.raises(RobotCommandError, match="send 'clear_error'"):
                    client.call(op, **fields)
            assert client.call("clear_error")["status"]["mode"] == "ready"
            client.call("step", delta=[0.0, 0.0, 0.01], gripper=0.0)
            # SIGUSR1 is the local e-stop button.
            server.process.send_signal(signal.SIGUSR1)
            status = _wait_for(lambda: (s := client.call("get_state")["status"])["mode"] == "estop" and s)
            assert status["reason"] == "estop: SIGUSR1"
            with pytest.raises(RobotCommandError, match="SIGUSR1"):
                client.call("step", delta=[0.0, 0.0, 0.01], gripper=0.0)
            assert client.call("clear_error")["status"]["mode"] == "ready"
        finally:
            client.close()


def test_bad_messages_get_error_replies_and_the_arm_holds(tmp_path):
    with running_server("--config", _config(tmp_path, watchdog_timeout_s=5.0)) as server:
        client = RobotClient(server.command_address, timeout_s=10)
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(server.command_address)
        try:
            with pytest.raises(RobotCommandError, match="send 'reset' first"):
                client.call("step", delta=[0.0, 0.0, 0.0], gripper=0.0)
            before = client.call("reset", seed=2)["state"]["ee_pos"].copy()
            bad = [
                [b"", b"not msgpack \xc1"],
                [b"", *encode(request("step", 5, delta=[float("nan"), 0.0, 0.0], gripper=0.0))],
                [b"", *encode(request("step", 6, delta=[0.0, 0.2, 0.0], gripper=0.0))],
                [b"", *encode(request("step", 7, delta=[0.0, 0.0, 0.0], gripper=3.0))],
                [b"", *encode(request("teleport", 8))],
                [b"", b"\x80" + b"\0" * 70000],  # over max_message_bytes
                [b""] + [b"\x80"] * 20,  # too many frames
                [b"", *encode({"v": 1, "op": "hello", "id": 9, "pad": np.zeros(100)})],
            ]
            for frames in bad:
                raw.send_multipart(frames)
                assert raw.poll(10_000), f"no reply to {frames[1][:20]!r}"
                answer = decode(raw.recv_multipart()[1:])
                assert answer["ok"] is False and answer["error"], answer
                assert answer["status"]["mode"] == "ready"
                np.testing.assert_array_equal(answer["state"]["ee_pos"], before)
            after = client.call("get_state")
            np.testing.assert_array_equal(after["state"]["ee_pos"], before)
            assert after["state"]["commanded_pos"] is None, "no rejected command reached the driver"
        finally:
            raw.close()
            client.close()


def test_limits_clip_targets_and_can_only_be_tightened(tmp_path):
    with running_server("--config", _config(tmp_path, watchdog_timeout_s=5.0)) as server:
        client = RobotClient(server.command_address, timeout_s=10)
        try:
            ee = client.call("reset", seed=0)["state"]["ee_pos"]
            ceiling = float(ee[2]) + 0.02
            reply = client.call("set_limits", workspace_high=[0.68, 0.3, ceiling])
            assert reply["limits"]["workspace_high"] == [0.68, 0.3, ceiling]
            for _ in range(3):
                reply = client.call("step", delta=[0.0, 0.0, 0.05], gripper=1.0)
                assert reply["state"]["commanded_pos"][2] <= ceiling
            assert reply["clipped"] is True
            with pytest.raises(RobotCommandError, match="only be tightened"):
                client.call("set_limits", workspace_high=[0.9, 0.3, 0.45])
            with pytest.raises(RobotCommandError, match="max_translation_per_step"):
                client.call("step", target=[0.25, 0.0, 0.2], gripper=1.0)
        finally:
            client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_server_cleanly(tmp_path, sig):
    with running_server("--config", _config(tmp_path, "kinematic")) as server:
        client = RobotClient(server.command_address, timeout_s=10)
        client.call("reset")
        client.close()
        assert server.stop(sig) == 0
        assert "stopped; arm holding" in server.stderr_text()


def test_off_loopback_without_keys_refuses_to_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hardware.server", "--driver", "kinematic", "--bind", "tcp://0.0.0.0:0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "needs CurveZMQ: pass --server-key" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "hardware.server", "--config", str(tmp_path / "nope.yaml")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "nope.yaml not found" in result.stderr


def test_curve_refuses_unknown_keys_and_accepts_allowed_ones(tmp_path, curve_keys):
    good_secret, bad_secret = curve_keys.client_secret, curve_keys.stranger_secret
    server_public = str(curve_keys.server_public)
    args = ["--config", _config(tmp_path, "kinematic"), "--require-auth", "--server-key", str(curve_keys.server_secret),
            "--allow-keys", str(curve_keys.allowed)]
    with running_server(*args) as server:
        assert "CurveZMQ on: 1 allowed client key(s)" in server.stderr_text()
        good = RobotClient(server.command_address, timeout_s=10, client_key=str(good_secret), server_key=server_public)
        stream = StateSubscriber(server.stream_address, client_key=str(good_secret), server_key=server_public)
        stranger = RobotClient(server.command_address, timeout_s=1.0, client_key=str(bad_secret), server_key=server_public)
        anonymous = RobotClient(server.command_address, timeout_s=1.0)
        try:
            assert good.call("hello")["info"]["driver"] == "kinematic"
            assert stream.recv(5.0)["topic"] == "state"
            with pytest.raises(RobotConnectionError, match="refused our CurveZMQ key"):
                stranger.call("hello")
            with pytest.raises(RobotConnectionError, match="does it require CurveZMQ keys"):
                anonymous.call("hello")
            assert good.call("get_state")["ok"], "the refused clients did not disturb the allowed one"
        finally:
            for c in (good, stream, stranger, anonymous):
                c.close()


def test_driver_fault_latches_until_clear_error():
    """In-process: a driver that fails mid-step puts the server in `fault`, and only clear_error leaves it."""
    from hardware.driver import DriverFault
    from hardware.drivers.kinematic import KinematicArmDriver
    from hardware.limits import load_config
    from hardware.server import RobotServer

    class FailingOnce(KinematicArmDriver):
        failed = False

        def move(self, command):
            if not self.failed:
                self.failed = True
                raise DriverFault("joint 4 torque limit")
            return super().move(command)

    config = load_config(CONFIG_DIR / "kinematic.yaml")
    context = zmq.Context.instance()
    commands, stream = context.socket(zmq.ROUTER), context.socket(zmq.PUB)
    try:
        server = RobotServer(FailingOnce(config.limits), config, commands, stream)

        def send(op, **fields):
            return decode(server.handle([b"client", b"", *encode(request(op, 1, **fields))])[2:])

        assert send("reset")["ok"]
        failed = send("step", delta=[0.01, 0.0, 0.0], gripper=1.0)
        assert failed["ok"] is False and failed["status"] == {"mode": "fault", "reason": "driver fault: joint 4 torque limit"}
        assert "send 'clear_error'" in send("step", delta=[0.01, 0.0, 0.0], gripper=1.0)["error"]
        assert send("clear_error")["status"]["mode"] == "ready"
        assert send("step", delta=[0.01, 0.0, 0.0], gripper=1.0)["status"]["mode"] == "moving"
    finally:
        commands.close(0)
        stream.close(0)


# ---------------------------------------------------------------- real-arm adapters against fakes of their SDKs


def _in_process_server(config, driver):
    from hardware.server import RobotServer

    context = zmq.Context.instance()
    sockets = context.socket(zmq.ROUTER), context.socket(zmq.PUB)
    server = RobotServer(driver, config, *sockets)

    def send(op, **fields):
        return decode(server.handle([b"client", b"", *encode(request(op, 1, **fields))])[2:])

    return server, send, sockets


def _fake_franky():
    import types

    calls = []
    module = types.ModuleType("franky")

    class Affine:
        def __init__(self, translation, quaternion=(0.0, 0.0, 0.0, 1.0)):
            self.translation, self.quaternion = np.array(translation, float), np.array(quaternion, float)

    class CartesianMotion:
        def __init__(self, target, reference):
            self.target, self.reference = target, reference

    class Robot:
        def __init__(self, host):
            calls.append(("robot", host))
            self.pose = Affine([0.5, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0])  # x, y, z, w: pointing down
            self.relative_dynamics_factor = None

        @property
        def current_cartesian_state(self):
            return types.SimpleNamespace(pose=types.SimpleNamespace(end_effector_pose=self.pose))

        @property
        def current_joint_state(self):
            return types.SimpleNamespace(position=[0.0] * 7, velocity=[0.0] * 7)

        def recover_from_errors(self):
            calls.append(("recover",))

        def move(self, motion, asynchronous=False):
            calls.append((type(motion).__name__, asynchronous))
            if isinstance(motion, CartesianMotion):
                self.pose = motion.target  # the fake arm arrives at once

    class Gripper:
        max_width = 0.08

        def __init__(self, host):
            self.width = 0.08

        def move_async(self, width, speed):
            calls.append(("gripper", round(width, 6)))
            self.width = width

    module.Affine, module.CartesianMotion, module.Robot, module.Gripper = Affine, CartesianMotion, Robot, Gripper
    module.JointMotion = type("JointMotion", (), {"__init__": lambda self, q: calls.append(("home", list(q)))})
    module.CartesianStopMotion = type("CartesianStopMotion", (), {})
    module.ReferenceType = types.SimpleNamespace(Absolute="absolute")
    return module, calls


def test_franka_adapter_sends_validated_absolute_targets(monkeypatch):
    from hardware.limits import load_config
    from hardware.server import make_driver

    franky, calls = _fake_franky()
    monkeypatch.setitem(sys.modules, "franky", franky)
    config = load_config(CONFIG_DIR / "franka.yaml")
    server, send, sockets = _in_process_server(config, make_driver(config))
    try:
        info = send("hello")["info"]
        assert info["driver"] == "franka" and info["action_scale"] == 0.02 and info["task_id"] is None
        assert send("reset")["ok"]
        assert ("home", config.franka.home_joints) in calls and ("gripper", 0.08) in calls
        reply = send("step", delta=[0.02, 0.0, 0.02], gripper=-1.0)
        assert reply["ok"], reply["error"]
        target = server.driver.robot.pose
        np.testing.assert_allclose(target.translation, [0.52, 0.0, 0.32])
        np.testing.assert_allclose(target.quaternion, [1.0, 0.0, 0.0, 0.0], atol=1e-12)  # orientation kept
        assert ("CartesianMotion", True) in calls and ("gripper", 0.0) in calls
        np.testing.assert_allclose(reply["state"]["obs"]["ee_quat"], [0.0, 1.0, 0.0, 0.0], atol=1e-6)  # wxyz
        assert reply["state"]["obs"]["gripper"][0] == 0.0
        # A jump the limits refuse never reaches franky.
        moves = len(calls)
        assert not send("step", delta=[0.0, 0.0, 0.05], gripper=-1.0)["ok"]
        assert calls[moves:] == [("CartesianStopMotion", True)], "refusal during motion holds the arm"
        # Box clipping happens before franky sees the target.
        for _ in range(10):
            send("step", delta=[0.0, 0.0, 0.02], gripper=-1.0)
        assert server.driver.robot.pose.translation[2] == pytest.approx(0.45)
    finally:
        for s in sockets:
            s.close(0)


def test_real_drivers_explain_missing_sdks(monkeypatch):
    from hardware.limits import RobotConfigError, load_config
    from hardware.server import make_driver

    monkeypatch.setitem(sys.modules, "franky", None)
    monkeypatch.setitem(sys.modules, "rtde_control", None)
    for name, package in (("franka", "franky-control"), ("ur", "ur-rtde")):
        with pytest.raises(RobotConfigError, match=f"pip install 'hilrl\\[real\\]' \\({package}\\)"):
            make_driver(load_config(CONFIG_DIR / f"{name}.yaml"))
    config = load_config(CONFIG_DIR / "franka.yaml").model_copy(update={"franka": None})
    with pytest.raises(RobotConfigError, match="needs a 'franka:' section"):
        make_driver(config)


def test_ur_adapter_servos_to_targets_and_estops(monkeypatch):
    import types

    from hardware.drivers.rotations import quat_from_axis_angle
    from hardware.limits import load_config
    from hardware.server import make_driver

    calls = []
    pose = [0.4, 0.0, 0.3, 3.14159, 0.0, 0.0]  # tool pointing down (180 degrees about x)

    class Control:
        def __init__(self, host):
            calls.append(("control", host))

        def servoL(self, target, speed, acceleration, dt, lookahead, gain):
            calls.append(("servoL", dt))
            pose[:] = target
            return True

        def moveJ(self, q):
            calls.append(("moveJ", list(q)))
            return True

        def servoStop(self):
            calls.append(("servoStop",))

        def triggerProtectiveStop(self):
            calls.append(("protective_stop",))

        def stopScript(self):
            calls.append(("stopScript",))

    class Receive:
        def __init__(self, host):
            pass

        def getActualTCPPose(self):
            return list(pose)

        def getActualQ(self):
            return [0.0] * 6

        def getActualQd(self):
            return [0.0] * 6

    monkeypatch.setitem(sys.modules, "rtde_control", types.SimpleNamespace(RTDEControlInterface=Control))
    monkeypatch.setitem(sys.modules, "rtde_receive", types.SimpleNamespace(RTDEReceiveInterface=Receive))
    config = load_config(CONFIG_DIR / "ur.yaml")
    server, send, sockets = _in_process_server(config, make_driver(config))
    try:
        assert send("reset")["ok"] and ("moveJ", config.ur.home_joints) in calls
        start = np.array(pose[3:])
        reply = send("step", delta=[0.01, -0.02, 0.0], gripper=0.5)
        assert reply["ok"], reply["error"]
        np.testing.assert_allclose(pose[:3], [0.41, -0.02, 0.3])
        # The orientation goes out as the same rotation it came in as (axis-angle may flip sign near pi).
        q_in, q_out = quat_from_axis_angle(start), quat_from_axis_angle(np.array(pose[3:]))
        assert abs(float(np.dot(q_in, q_out))) == pytest.approx(1.0, abs=1e-9)
        assert ("servoL", 0.1) in calls
        assert send("estop")["status"]["mode"] == "estop"
        assert calls[-2:] == [("servoStop",), ("protective_stop",)]
    finally:
        server.driver.close()
        for s in sockets:
            s.close(0)
    assert calls[-1] == ("stopScript",)


# ---------------------------------------------------------------- choosing the task (sim driver, in process)


def _sim_server(**sim):
    """An in-process server on the sim driver; ``send(client, op, **fields)`` answers as the ROUTER would."""
    from hardware.drivers.sim import SimArmDriver
    from hardware.limits import load_config
    from hardware.server import RobotServer

    config = load_config(CONFIG_DIR / "sim.yaml")
    config = config.model_copy(update={"sim": config.sim.model_copy(update={"realtime": False, **sim})})
    context = zmq.Context.instance()
    sockets = context.socket(zmq.ROUTER), context.socket(zmq.PUB)
    server = RobotServer(SimArmDriver(config.sim, config.control_hz), config, *sockets)

    def send(client: bytes, op: str, **fields):
        return decode(server.handle([client, b"", *encode(request(op, 1, **fields))])[2:])

    return server, send, sockets


def _close(server, sockets):
    server.driver.close()
    for s in sockets:
        s.close(0)


def test_a_hello_switches_the_task_only_outside_another_clients_episode():
    from hardware.server import EPISODE_IDLE_S

    server, send, sockets = _sim_server()
    step = {"delta": [0.0, 0.0, 0.01], "gripper": 1.0}
    try:
        assert send(b"A", "hello")["info"]["task_id"] == "hilrl/Reach-v0"
        assert send(b"A", "reset", seed=0)["ok"] and send(b"A", "step", **step)["ok"]
        # B asks for PickCube while A is in its episode: refused, and A's episode goes on.
        refused = send(b"B", "hello", task={"id": "hilrl/PickCube-v0"})
        assert not refused["ok"] and "another client is in an episode of hilrl/Reach-v0" in refused["error"]
        assert send(b"A", "step", **step)["ok"]
        # Asking for what already runs needs no switch, so it is never refused.
        assert send(b"B", "hello", task={"id": "hilrl/Reach-v0", "cameras": []})["ok"]
        # A goes silent mid-episode (crashed?): after EPISODE_IDLE_S another client may take the arm.
        server.episode_seen -= EPISODE_IDLE_S
        info = send(b"B", "hello", task={"id": "hilrl/PickCube-v0", "max_episode_steps": 2})["info"]
        assert (info["task_id"], info["max_episode_steps"]) == ("hilrl/PickCube-v0", 2)
        assert info["reward_terms"] == ["reach", "grasped", "place", "success"]
        # A never stepped in a task it did not ask for: it must say hello again.
        for op, fields in (("step", step), ("reset", {})):
            answer = send(b"A", op, **fields)
            assert not answer["ok"] and "now serves hilrl/PickCube-v0, switched for another client" in answer["error"]
        assert send(b"B", "reset", seed=1)["state"]["task"]["reward_terms"]["success"] == 0.0
        state = send(b"B", "step", **step)["state"]
        assert set(state["task"]["reward_terms"]) == {"reach", "grasped", "place", "success"}
        # B's episode ends at its 2-step limit; A's hello may switch back at once.
        assert send(b"B", "step", **step)["state"]["task"]["truncated"] is True
        assert send(b"A", "hello", task={"id": "hilrl/Push-v0"})["info"]["task_id"] == "hilrl/Push-v0"
        assert send(b"A", "reset", seed=0)["ok"]
        assert "now serves hilrl/Push-v0" in send(b"B", "step", **step)["error"]
    finally:
        _close(server, sockets)


def test_task_requests_the_robot_config_does_not_allow_are_refused():
    server, send, sockets = _sim_server(tasks=["hilrl/Reach-v0", "hilrl/Push-v0"])
    try:
        for task, error in (
            ({"id": "hilrl/PegInsert-v0"}, "'hilrl/PegInsert-v0' is not served here: this robot config allows "
                                          "hilrl/Reach-v0, hilrl/Push-v0 (sim.tasks)"),
            ({"control_hz": 20.0}, "control_hz=20.0 but this robot runs at 10.0 Hz"),
            ({"id": "hilrl/Push-v0", "cameras": ["top"]}, "unknown camera 'top'"),
            ({"reward_type": "shaped"}, "reward_type='shaped'"),
            ({"id": "hilrl/Reach-v0", "speed": 2.0}, r"'task' does not take ['speed']"),
        ):
            answer = send(b"A", "hello", task=task)
            assert not answer["ok"] and error in answer["error"], answer["error"]
        assert send(b"A", "hello")["info"]["task_id"] == "hilrl/Reach-v0", "a refused request changes nothing"
        assert send(b"A", "estop")["status"]["mode"] == "estop"
        answer = send(b"A", "hello", task={"id": "hilrl/Push-v0"})
        assert not answer["ok"] and "send 'clear_error'" in answer["error"], "a latched stop blocks a switch"
        send(b"A", "clear_error")
        assert send(b"A", "hello", task={"id": "hilrl/Push-v0"})["info"]["task_id"] == "hilrl/Push-v0"
    finally:
        _close(server, sockets)


def test_task_option_pins_the_sim_task():
    from hardware.limits import RobotConfigError
    from hardware.server import _load, build_parser

    config = _load(build_parser().parse_args(["--driver", "sim", "--task", "hilrl/PickCube-v0"]))
    assert config.sim.task == "hilrl/PickCube-v0" and config.sim.tasks == ["hilrl/PickCube-v0"]
    with pytest.raises(RobotConfigError, match="--task hilrl/PickCube-v0 is for the sim driver"):
        _load(build_parser().parse_args(["--driver", "kinematic", "--task", "hilrl/PickCube-v0"]))


def test_bad_reward_terms_from_a_driver_latch_a_fault():
    from hardware.drivers.kinematic import KinematicArmDriver
    from hardware.limits import load_config

    class BadTerms(KinematicArmDriver):
        def move(self, command):
            state = super().move(command)
            state.task = {"reward": 0.0, "terminated": False, "truncated": False, "reward_terms": {"reach": float("nan")}}
            return state

    config = load_config(CONFIG_DIR / "kinematic.yaml")
    server, send, sockets = _in_process_server(config, BadTerms(config.limits))
    try:
        assert send("reset")["ok"]
        answer = send("step", delta=[0.01, 0.0, 0.0], gripper=1.0)
        assert answer["status"]["mode"] == "fault"
        assert "reward term 'reach' must be a finite number" in answer["error"]
    finally:
        for s in sockets:
            s.close(0)
