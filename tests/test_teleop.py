"""Teleop devices, driven by events injected into each backend (no physical device here)."""

from __future__ import annotations

import importlib.util
import os
import queue
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import yaml

from hilrl.config import EnvConfig
from hilrl.data.hdf5 import DemoFile
from hilrl.envs.make import make_env
from hilrl.feedback.experts import make_expert
from hilrl.feedback.interventions import InterventionWrapper
from hilrl.feedback.teleop import (
    SCREEN_TO_BASE,
    DeviceInterventionist,
    ExpertDevice,
    FrameMap,
    TeleopCommand,
    TeleopError,
    make_device,
    teleop_episode,
)
from hilrl.feedback.teleop.keyboard import KeyboardDevice
from hilrl.feedback.teleop.spacemouse import SpaceMouseDevice
from hilrl.runtime.record import record_demos

ROOT = Path(__file__).parents[1]


def reach(max_steps: int = 12, **kwargs) -> EnvConfig:
    return EnvConfig(id="hilrl/Reach-v0", max_episode_steps=max_steps, **kwargs)


def ee_motion(env, device, steps: int = 4) -> np.ndarray:
    """How far the tool centre point moved while ``device`` drove ``env`` for ``steps`` steps."""
    obs, _ = env.reset(seed=0)
    start = obs["ee_pos"].copy()
    for _ in range(steps):
        command = device.read()
        obs, *_ = env.step(device.frame_map.to_action(command, env.action_space.shape[0], 1.0))
    return obs["ee_pos"] - start


# ---------------------------------------------------------------- frame map and command
def test_screen_frame_maps_to_the_robot_base_frame():
    away, right, down = np.eye(3)[1] * -1, np.eye(3)[0], np.eye(3)[2]
    cmd = lambda v, r=(0, 0, 0): TeleopCommand(np.r_[v, r])  # noqa: E731
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(cmd(away), 4, 1.0), [1, 0, 0, 1])  # away = forward
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(cmd(right), 4, 1.0), [0, -1, 0, 1])  # right = -y
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(cmd(-down), 4, -1.0), [0, 0, 1, -1])  # up = +z
    # rotation about the device's down axis is yaw about base -z
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(cmd((0, 0, 0), (0, 0, 0.5)), 7, 0.0), [0, 0, 0, 0, 0, -0.5, 0])


def test_frame_map_gain_clipping_reflection_and_bad_input():
    fm = FrameMap.from_axes(("x", "y", "-z"), translation_gain=3.0, rotation_gain=0.5)
    action = fm.to_action(TeleopCommand(np.array([0.5, -0.1, 0.2, 0.0, 0.0, 1.0]), gripper=-1.0), 7, 1.0)
    # a mirror flips z for vectors, and its det (-1) keeps the rotation vector a pseudo-vector
    np.testing.assert_allclose(action, [1.0, -0.3, -0.6, 0.0, 0.0, 0.5, -1.0], atol=1e-6)
    with pytest.raises(TeleopError, match="orthogonal"):
        FrameMap(np.ones((3, 3)))
    with pytest.raises(TeleopError, match="exactly once"):
        FrameMap.from_axes(("x", "x", "z"))
    with pytest.raises(TeleopError, match="not an axis"):
        FrameMap.from_axes(("x", "w", "z"))
    with pytest.raises(TeleopError, match="size 4 or 7"):
        FrameMap().to_action(TeleopCommand(), 5, 1.0)
    with pytest.raises(TeleopError, match=r"shape \(6,\)"):
        TeleopCommand(np.zeros(3))
    with pytest.raises(TeleopError, match="unknown teleop buttons"):
        TeleopCommand(buttons=frozenset({"jump"}))


# ---------------------------------------------------------------- keyboard
def test_keyboard_keys_make_deltas_gripper_and_buttons():
    kb = KeyboardDevice(listen=False)
    assert kb.read().gripper is None and not kb.read().buttons
    kb.press("w")
    kb.press("A")  # case does not matter
    kb.press("j")
    np.testing.assert_allclose(kb.read().delta, [1, 1, 0, 0, 0, 1])
    kb.press("s")  # opposite keys cancel
    np.testing.assert_allclose(kb.read().delta, [0, 1, 0, 0, 0, 1])
    for key in ("w", "s", "a", "j"):
        kb.release(key)
    kb.press("f1")  # unbound keys are ignored
    np.testing.assert_allclose(kb.read().delta, np.zeros(6))

    kb.press("q")
    kb.release("q")
    assert kb.read().gripper == -1.0  # latched after the key is released
    kb.press("e")
    assert kb.read().gripper == 1.0
    kb.press("space")
    assert "intervene" in kb.read().buttons and "intervene" in kb.read().buttons  # held
    kb.release("space")
    assert "intervene" not in kb.read().buttons
    kb.press("enter")
    kb.release("enter")
    assert kb.read().buttons == {"success"}
    assert kb.read().buttons == frozenset()  # an event is reported once
    kb.press("backspace")
    kb.press("\\")
    kb.reset()  # a new episode forgets pending events and the gripper latch
    assert kb.read().buttons == frozenset() and kb.read().gripper is None


def test_keyboard_handles_pynput_key_objects(monkeypatch, request):
    if not os.environ.get("DISPLAY"):
        monkeypatch.setenv("PYNPUT_BACKEND", "dummy")  # key classes without an X server; no listener is started
        loaded = set(sys.modules)  # forget the dummy-backed modules afterwards: a later keyboard must find no backend

        def forget() -> None:
            for name in set(sys.modules) - loaded:
                if name.split(".")[0] == "pynput":
                    del sys.modules[name]

        request.addfinalizer(forget)
    keyboard = pytest.importorskip("pynput.keyboard")
    kb = KeyboardDevice(listen=False)
    kb.on_press(keyboard.KeyCode.from_char("R"))
    kb.on_press(keyboard.KeyCode.from_char("\\"))
    command = kb.read()
    np.testing.assert_allclose(command.delta, [0, 0, 1, 0, 0, 0])
    assert command.buttons == {"rerecord"}
    kb.on_release(keyboard.KeyCode.from_char("r"))
    kb.on_press(SimpleNamespace(char=None, name="space"))  # the shape of a pynput Key member
    command = kb.read()
    np.testing.assert_allclose(command.delta, np.zeros(6))
    assert command.buttons == {"intervene"}


def test_keyboard_rejects_bad_key_maps():
    with pytest.raises(TeleopError, match="index 0-5"):
        KeyboardDevice(motion_keys={"w": (6, 1.0)}, listen=False)
    with pytest.raises(TeleopError, match="allowed actions"):
        KeyboardDevice(action_keys={"x": "jump"}, listen=False)
    with pytest.raises(TeleopError, match="both to motion and to an action"):
        KeyboardDevice(action_keys={"w": "success"}, listen=False)
    with pytest.raises(TeleopError, match="key_speed"):
        KeyboardDevice(key_speed=0.0, listen=False)


def test_keyboard_keys_move_the_arm_along_the_named_base_axes():
    env = make_env(reach())
    kb = KeyboardDevice(listen=False)
    try:
        for key, axis, sign in (("w", 0, 1), ("a", 1, 1), ("d", 1, -1), ("f", 2, -1)):
            kb.press(key)
            moved = ee_motion(env, kb)
            kb.release(key)
            assert sign * moved[axis] > 0.1, (key, moved)  # 4 steps of 5 cm, less the controller's lag
            assert np.abs(np.delete(moved, axis)).max() < 0.2 * abs(moved[axis]), (key, moved)
    finally:
        env.close()


# ---------------------------------------------------------------- gamepad
@pytest.fixture()
def gamepad():
    pygame = pytest.importorskip("pygame")
    from hilrl.feedback.teleop.gamepad import GamepadDevice

    device = GamepadDevice(open_device=False)
    pygame.event.clear()
    yield pygame, device
    device.close()


def test_gamepad_events_from_pygames_queue(gamepad):
    pygame, pad = gamepad
    post = lambda kind, **kw: pygame.event.post(pygame.event.Event(kind, joy=0, instance_id=0, **kw))  # noqa: E731
    post(pygame.JOYAXISMOTION, axis=1, value=-1.0)  # left stick up
    post(pygame.JOYAXISMOTION, axis=0, value=0.05)  # drift inside the stick dead-zone
    post(pygame.JOYHATMOTION, hat=0, value=(1, 0))
    post(pygame.JOYBUTTONDOWN, button=5)  # RB closes
    post(pygame.JOYBUTTONDOWN, button=2)  # X held: intervene
    post(pygame.JOYBUTTONDOWN, button=0)  # A: success
    command = pad.read()
    np.testing.assert_allclose(command.delta, [0, -1, 0, 0, -1, 0])
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(command, 7, 1.0), [1, 0, 0, 1, 0, 0, -1])  # forward, roll +
    assert command.buttons == {"intervene", "success"}
    post(pygame.JOYBUTTONUP, button=2)
    post(pygame.JOYAXISMOTION, axis=4, value=-0.5)  # right stick up: base +z
    post(pygame.JOYBUTTONDOWN, button=4)  # LB opens
    command = pad.read()
    assert command.buttons == frozenset() and command.gripper == 1.0
    assert SCREEN_TO_BASE.to_action(command, 4, 1.0)[2] == pytest.approx(0.5)


def test_gamepad_stick_moves_the_arm_forward(gamepad):
    pygame, pad = gamepad
    pygame.event.post(pygame.event.Event(pygame.JOYAXISMOTION, joy=0, instance_id=0, axis=1, value=-1.0))
    env = make_env(reach())
    try:
        moved = ee_motion(env, pad)
    finally:
        env.close()
    assert moved[0] > 0.1 and abs(moved[1]) < 0.02, moved


def test_gamepad_without_a_joystick_says_so(gamepad):
    from hilrl.feedback.teleop.gamepad import GamepadDevice, GamepadLayout

    pygame, _ = gamepad
    if pygame.joystick.get_count() > 0:
        pytest.skip("a joystick is plugged in")
    with pytest.raises(TeleopError, match="gamepad 0 not found: pygame sees 0"):
        GamepadDevice()
    with pytest.raises(TeleopError, match="allowed actions"):
        GamepadLayout(buttons={0: "fly"})


# ---------------------------------------------------------------- spacemouse
def report(report_id: int, *values: int) -> bytes:
    return bytes([report_id]) + struct.pack(f"<{len(values)}h", *values)


def test_spacemouse_parses_hid_reports():
    sm = SpaceMouseDevice(hid_device=False)
    sm.handle_report(report(1, 0, -350, 175))  # push away, half down
    sm.handle_report(report(2, 0, 0, 700))  # twist past full scale
    command = sm.read()
    np.testing.assert_allclose(command.delta, [0, -1, 0.5, 0, 0, 1])
    np.testing.assert_allclose(SCREEN_TO_BASE.to_action(command, 7, 1.0), [1, 0, -0.5, 0, 0, -1, 1])
    sm.handle_report(report(1, 35, 0, 0, 0, -70, 0))  # newer devices: 6 axes in report 1
    np.testing.assert_allclose(sm.read().delta, [0.1, 0, 0, 0, -0.2, 0], atol=1e-6)
    sm.handle_report(bytes([3, 0b01, 0]))  # left button down: close
    assert sm.read().gripper == -1.0
    sm.handle_report(bytes([3, 0b10, 0]))  # left up, right down: open
    assert sm.read().gripper == 1.0
    sm.handle_report(bytes([9, 1, 2, 3]))  # unknown report ids are ignored
    sm.handle_report(b"")


def test_spacemouse_button_map_and_bad_settings():
    sm = SpaceMouseDevice(hid_device=False, buttons={0: "intervene", 9: "success"})
    sm.handle_report(bytes([3, 0b01, 0b10]))  # bit 0 and bit 9
    assert sm.read().buttons == {"intervene", "success"}
    sm.handle_report(bytes([3, 0, 0]))
    assert sm.read().buttons == frozenset()
    with pytest.raises(TeleopError, match="allowed actions"):
        SpaceMouseDevice(hid_device=False, buttons={0: "jump"})
    with pytest.raises(TeleopError, match="full_scale"):
        SpaceMouseDevice(hid_device=False, full_scale=0)


class FakeHid:
    """Stands in for hidapi's device object: hands out queued reports, like a real read with timeout."""

    def __init__(self) -> None:
        self.reports: queue.Queue[bytes] = queue.Queue()
        self.closed = False

    def read(self, size: int, timeout_ms: int) -> list[int]:
        try:
            return list(self.reports.get(timeout=timeout_ms / 1000))[:size]
        except queue.Empty:
            return []

    def close(self) -> None:
        self.closed = True


def test_spacemouse_reader_thread_keeps_the_latest_state():
    hid = FakeHid()
    sm = SpaceMouseDevice(hid_device=hid)
    for y in range(-10, -360, -10):
        hid.reports.put(report(1, 0, y, -350))
    deadline = 200
    while hid.reports.qsize() and deadline:
        deadline -= 1
        sm._stop.wait(0.01)
    sm._stop.wait(0.1)  # the last report read is handled
    np.testing.assert_allclose(sm.read().delta[:3], [0, -1, -1])
    sm.close()
    assert hid.closed and sm._thread is None


def test_spacemouse_push_moves_the_arm_forward_and_down():
    sm = SpaceMouseDevice(hid_device=False)
    sm.handle_report(report(1, 0, -350, 350))  # away and pressed down (the arm starts 5 cm below its top limit)
    env = make_env(reach())
    try:
        moved = ee_motion(env, sm)
    finally:
        env.close()
    assert moved[0] > 0.1 and moved[2] < -0.1 and abs(moved[1]) < 0.02, moved


def test_spacemouse_missing_device_is_named():
    hid = pytest.importorskip("hid")
    if not hasattr(hid, "enumerate"):
        pytest.skip("another package's 'hid' module")
    if any(d.get("vendor_id") in (0x046D, 0x256F) for d in hid.enumerate()):
        pytest.skip("a 3Dconnexion/Logitech HID device is plugged in")
    with pytest.raises(TeleopError, match="no SpaceMouse found"):
        make_device("spacemouse")


# ---------------------------------------------------------------- intervention source
def test_device_interventionist_gates_like_hil_serl():
    kb = KeyboardDevice(listen=False, key_speed=0.04)  # below the 0.05 dead-zone
    source = DeviceInterventionist(kb)
    policy = np.array([0.3, 0.0, 0.0, -1.0], dtype=np.float32)
    assert source({}, policy) is None
    kb.press("w")
    assert source({}, policy) is None  # inside the dead-zone
    kb.press("a")  # norm 0.057
    np.testing.assert_allclose(source({}, policy), [0.04, 0.04, 0, -1.0])  # gripper: the policy's, untouched
    kb.release("w")
    kb.release("a")
    kb.press("space")
    np.testing.assert_allclose(source({}, policy), [0, 0, 0, -1.0])  # held button: the device holds still
    kb.release("space")
    kb.press("e")
    np.testing.assert_allclose(source({}, policy), [0, 0, 0, 1.0])  # a gripper change takes over once
    assert source({}, policy) is None
    kb.press("enter")
    assert source({}, policy) is None and source.last_command.buttons == {"success"}
    with pytest.raises(TeleopError, match="dead_zone"):
        DeviceInterventionist(kb, dead_zone=-1)


def test_device_intervention_inside_the_wrapper_marks_and_moves():
    kb = KeyboardDevice(listen=False)
    env = InterventionWrapper(make_env(reach()), DeviceInterventionist(kb))
    try:
        obs, _ = env.reset(seed=1)
        flags, xs = [], [float(obs["ee_pos"][0])]
        for t in range(7):
            (kb.press if t == 2 else kb.release if t == 5 else lambda _: None)("w")
            obs, _, _, _, info = env.step(np.zeros(4, dtype=np.float32))
            flags.append(info["intervened"])
            xs.append(float(obs["ee_pos"][0]))
            if info["intervened"]:
                np.testing.assert_allclose(info["executed_action"], [1, 0, 0, 0])
        assert flags == [False, False, True, True, True, False, False]
        assert env.interventions == 1 and xs[5] - xs[2] > 0.08
    finally:
        env.close()


def test_expert_device_drives_reach_to_success_and_matches_the_expert():
    env = make_env(reach(max_steps=50))
    try:
        expert = make_expert(env)
        episode = teleop_episode(env, ExpertDevice(expert), seed=3)
        assert episode.success and episode.attrs["label"] == "env" and episode.terminated[-1]
        for t in (0, len(episode) // 2):
            obs = {k: v[t] for k, v in episode.obs.items()}
            np.testing.assert_allclose(episode.actions[t], expert(obs), atol=1e-6)
        source = DeviceInterventionist(ExpertDevice(expert))
        source.reset()
        obs = {k: v[0] for k, v in episode.obs.items()}
        np.testing.assert_allclose(source(obs, np.zeros(4)), expert(obs), atol=1e-6)
    finally:
        env.close()


# ---------------------------------------------------------------- recording
class ScriptedKeyboard(KeyboardDevice):
    """A keyboard whose key events come from a script: read number -> events, as a person would type."""

    def __init__(self, script: dict[int, list[tuple[str, str]]]) -> None:
        super().__init__(listen=False)
        self.script = script
        self.reads = 0

    def read(self) -> TeleopCommand:
        for kind, key in self.script.get(self.reads, []):
            (self.press if kind == "down" else self.release)(key)
        self.reads += 1
        return super().read()


def test_record_with_a_keyboard_labels_discards_and_stores_the_device(tmp_path):
    script = {
        # episode 0: forward for 3 steps, then success (the step after the press is the last)
        0: [("down", "w")], 3: [("up", "w"), ("down", "q")], 4: [("down", "enter"), ("up", "enter")],
        # episode 1: re-recorded after 2 steps; the retry (same seed) ends with failure
        5: [("down", "a")], 7: [("down", "\\"), ("up", "\\"), ("up", "a")],
        9: [("down", "backspace"), ("up", "backspace")],
        # episode 2: nobody presses anything, the time limit ends it
    }
    device = ScriptedKeyboard(script)
    out = tmp_path / "kb.hdf5"
    stats = record_demos(reach(max_steps=6), out, 3, device=device, seed=10, show_progress=False, realtime=False)
    assert stats.episodes == 3 and stats.successes == 1
    with DemoFile(out) as demos:
        eps = list(demos)
    assert [len(e) for e in eps] == [5, 2, 6]
    assert [e.attrs["device"] for e in eps] == ["keyboard"] * 3
    assert [e.attrs["success"] for e in eps] == [True, False, False]
    assert [e.attrs["label"] for e in eps] == ["human", "human", "env"]
    assert [e.attrs["seed"] for e in eps] == [10, 11, 12]
    np.testing.assert_allclose(eps[0].actions[:, 0], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(eps[0].actions[:, -1], [1, 1, 1, -1, -1])  # q closed at read 3, latched
    assert eps[0].terminated.tolist() == [False] * 4 + [True] and not eps[0].truncated.any()
    assert eps[1].truncated.tolist() == [False, True] and not eps[1].terminated.any()
    np.testing.assert_allclose(eps[1].actions[:, :3], 0)  # the 'a' steps were discarded with the attempt
    np.testing.assert_allclose(eps[1].actions[:, -1], 1)  # a new episode starts with the gripper open
    assert eps[2].truncated[-1] and not eps[2].terminated.any()
    assert eps[0].next_obs["ee_pos"][2, 0] > eps[0].obs["ee_pos"][0, 0] + 0.1  # the arm went forward


def test_paced_recording_through_a_remote_arm(tmp_path):
    """``record`` is the same over the ZMQ link to a robot server (MuJoCo driver in a subprocess)."""
    from hardware.server import CONFIG_DIR
    from hardware.testing import running_server

    config = yaml.safe_load((CONFIG_DIR / "sim.yaml").read_text())
    config["sim"] = {"task": "hilrl/Reach-v0", "env_kwargs": {}, "realtime": False}
    config["watchdog_timeout_s"] = 5.0
    config["control_hz"] = 50.0
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(config))
    device = ScriptedKeyboard({0: [("down", "f")], 3: [("down", "enter")]})
    with running_server("--config", str(path)) as server:
        env_config = reach(max_steps=10, remote=server.command_address, control_hz=50.0)
        # realtime: paced at the env's control_hz (50 Hz here to keep the test short)
        stats = record_demos(env_config, tmp_path / "remote.hdf5", 1, device=device, show_progress=False)
    assert stats.successes == 1 and stats.lengths == [4]
    with DemoFile(tmp_path / "remote.hdf5") as demos:
        episode = demos.episode(demos.demo_names[0])
    assert episode.attrs["device"] == "keyboard"
    assert episode.next_obs["ee_pos"][-1, 2] < episode.obs["ee_pos"][0, 2] - 0.03  # down (4 short 20 ms steps)


def test_unknown_devices_are_named(tmp_path):
    with pytest.raises(TeleopError, match="allowed: keyboard, gamepad, spacemouse"):
        make_device("joystick")
    with pytest.raises(Exception, match="allowed: expert, keyboard, gamepad, spacemouse"):
        record_demos(reach(), tmp_path / "x.hdf5", 1, device="mouse")


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="an X display is available, so the keyboard would open")
def test_cli_keyboard_without_a_display_fails_with_one_clear_line(tmp_path):
    if importlib.util.find_spec("pynput") is None:
        pytest.skip("pynput is not installed (the missing-package error is the one to see then)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYNPUT_BACKEND")}
    result = subprocess.run(
        [sys.executable, "-m", "hilrl.cli", "record", str(ROOT / "sim_configs/reach.yaml"), "--device", "keyboard",
         "--episodes", "1", "--out", str(tmp_path / "k.hdf5")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs an X display" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "k.hdf5").exists()


@pytest.mark.parametrize(("device", "module", "package"), [
    ("keyboard", "pynput", "pynput"), ("gamepad", "pygame", "pygame"), ("spacemouse", "hid", "hidapi"),
])
def test_a_missing_backend_package_names_the_extra(monkeypatch, device, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # import of it now fails, as when it is not installed
    with pytest.raises(TeleopError, match=rf"needs the '{package}' package.*pip install 'hilrl\[teleop\]'"):
        make_device(device)


def test_a_human_render_mode_env_is_shown_after_every_step():
    class Watched(gym.Wrapper):
        render_mode = "human"
        frames = 0

        def render(self):
            self.frames += 1

    env = Watched(make_env(reach(max_steps=5)))
    try:
        episode = teleop_episode(env, KeyboardDevice(listen=False), seed=0)
    finally:
        env.close()
    assert len(episode) == 5 and env.frames == 6  # the reset, then each step
