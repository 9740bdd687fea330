"""RemoteArmEnv against a real robot server subprocess running the MuJoCo task."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import hilrl.envs  # noqa: F401  (registers the tasks)
from hardware.server import CONFIG_DIR
from hardware.testing import running_server
from hilrl.envs.remote import RemoteArmEnv, RobotConnectionError
from hilrl.errors import HilrlError


def _sim_config(tmp_path, task: str, **env_kwargs) -> str:
    config = yaml.safe_load((CONFIG_DIR / "sim.yaml").read_text())
    config["sim"] = {"task": task, "env_kwargs": env_kwargs, "realtime": False}
    config["watchdog_timeout_s"] = 5.0  # the local twin steps in between: keep a loaded CI box from tripping it
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _play_both(remote: gym.Env, local: gym.Env, seed: int, actions: np.ndarray):
    """Step both envs with the same actions; return the per-step largest obs difference and outcomes."""
    remote_obs, remote_info = remote.reset(seed=seed)
    local_obs, local_info = local.reset(seed=seed)
    assert remote_info["is_success"] == local_info["is_success"]
    assert remote_info["reward_terms"] == pytest.approx(local_info["reward_terms"], abs=1e-6)
    gaps = [max(float(np.max(np.abs(remote_obs[k].astype(float) - local_obs[k]))) for k in local_obs)]
    for action in actions:
        r_obs, r_rew, r_term, r_trunc, r_info = remote.step(action)
        l_obs, l_rew, l_term, l_trunc, l_info = local.step(action)
        assert set(r_obs) == set(l_obs)
        assert all(r_obs[k].dtype == l_obs[k].dtype and r_obs[k].shape == l_obs[k].shape for k in l_obs)
        gaps.append(max(float(np.max(np.abs(r_obs[k].astype(float) - l_obs[k]))) for k in l_obs))
        assert r_rew == pytest.approx(l_rew, abs=1e-6)
        assert (r_term, r_trunc, r_info["is_success"]) == (l_term, l_trunc, l_info["is_success"])
        assert list(r_info["reward_terms"]) == list(l_info["reward_terms"]) == list(remote.reward_terms)
        assert r_info["reward_terms"] == pytest.approx(l_info["reward_terms"], abs=1e-6)
        if l_term or l_trunc:
            break
    return gaps


def test_seeded_episode_through_the_server_matches_the_local_task(tmp_path):
    with running_server("--config", _sim_config(tmp_path, "hilrl/Reach-v0")) as server:
        remote = RemoteArmEnv(server.command_address, "hilrl/Reach-v0", cameras=(), control_hz=10.0, timeout_s=20)
        local = gym.make("hilrl/Reach-v0")
        try:
            assert remote.observation_space == local.observation_space
            assert remote.action_space == local.action_space
            assert remote.task_name == local.unwrapped.task_name
            assert remote.action_scale == local.unwrapped.action_scale
            np.testing.assert_array_equal(remote.workspace[0], local.unwrapped.workspace[0])
            # Big random actions push the arm into the workspace walls, so clipping is exercised too.
            actions = np.random.default_rng(0).uniform(-1.2, 1.2, size=(60, 4)).astype(np.float32)
            gaps = _play_both(remote, local, seed=7, actions=actions)
            assert len(gaps) > 10 and max(gaps) < 1e-5
            # A second seed differs from the first, and still matches locally.
            first_obs, _ = remote.reset(seed=7)
            other_obs, _ = remote.reset(seed=8)
            assert not np.array_equal(first_obs["object"], other_obs["object"])
        finally:
            remote.close()
            local.close()


def test_camera_images_and_rotation_travel_intact(tmp_path):
    kwargs = {"cameras": ["front"], "image_size": 32, "use_rotation": True}
    with running_server("--config", _sim_config(tmp_path, "hilrl/Push-v0", **kwargs)) as server:
        remote = RemoteArmEnv(server.command_address, "hilrl/Push-v0", cameras=("front",), image_size=32, use_rotation=True, timeout_s=20)
        local = gym.make("hilrl/Push-v0", cameras=("front",), image_size=32, use_rotation=True)
        try:
            assert remote.observation_space["front"].shape == (32, 32, 3)
            actions = np.random.default_rng(1).uniform(-1, 1, size=(8, 7)).astype(np.float32)
            gaps = _play_both(remote, local, seed=3, actions=actions)
            assert max(gaps) < 1e-5
            frame = remote.render()
            assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.flags.writeable
        finally:
            remote.close()
            local.close()


def test_time_limit_truncates_and_passes_the_env_checker(tmp_path):
    from gymnasium.utils.env_checker import check_env

    with running_server("--config", _sim_config(tmp_path, "hilrl/Reach-v0")) as server:
        env = RemoteArmEnv(server.command_address, max_episode_steps=3, timeout_s=20)
        try:
            assert env.server_info["max_episode_steps"] == 3, "the hello asked the server's task for the limit"
            check_env(env, skip_render_check=True)
            env.reset(seed=0)
            outcomes = [env.step(np.zeros(4, np.float32))[2:4] for _ in range(3)]
            assert outcomes == [(False, False), (False, False), (False, True)]
            assert env.client.call("get_state")["status"]["mode"] == "ready", "the task's truncation disarms the watchdog"
        finally:
            env.close()


def test_the_hello_switches_the_sim_to_the_task_and_settings_asked_for(tmp_path):
    """A server started on Reach serves Push with a camera and a 7-step limit to the client that asks for them."""
    kwargs = {"cameras": ("front",), "image_size": 32, "max_episode_steps": 7, "terminate_on_success": False}
    with running_server("--config", _sim_config(tmp_path, "hilrl/Reach-v0")) as server:
        remote = RemoteArmEnv(server.command_address, "hilrl/Push-v0", timeout_s=20, **kwargs)
        local = gym.make("hilrl/Push-v0", **kwargs)
        try:
            assert remote.task_name == "Push" and remote.observation_space == local.observation_space
            assert remote.reward_terms == ("reach_distance", "goal_distance") == local.unwrapped.reward_terms
            assert remote.max_episode_steps == remote.server_info["max_episode_steps"] == 7
            actions = np.random.default_rng(2).uniform(-1, 1, size=(20, 4)).astype(np.float32)
            gaps = _play_both(remote, local, seed=5, actions=actions)
            assert len(gaps) == 8 and max(gaps) < 1e-5, "truncated at step 7 on both sides"
            assert "now serving hilrl/Push-v0" in server.stderr_text()
        finally:
            remote.close()
            local.close()


def test_refusals_and_bad_actions_are_named(tmp_path):
    config = yaml.safe_load(Path(_sim_config(tmp_path, "hilrl/Reach-v0")).read_text())
    config["sim"]["tasks"] = ["hilrl/Reach-v0"]  # pinned: a client may not switch it to another task
    (tmp_path / "sim.yaml").write_text(yaml.safe_dump(config))
    with running_server("--config", str(tmp_path / "sim.yaml")) as server:
        address = server.command_address
        with pytest.raises(HilrlError, match="'hilrl/Push-v0' is not served here: this robot config allows hilrl/Reach-v0"):
            RemoteArmEnv(address, "hilrl/Push-v0")
        with pytest.raises(HilrlError, match=r"control_hz=20.0 but this robot runs at 10.0 Hz"):
            RemoteArmEnv(address, control_hz=20.0)
        with pytest.raises(HilrlError, match="unknown camera 'top'"):
            RemoteArmEnv(address, cameras=("top",))
        env = RemoteArmEnv(address, "hilrl/Reach-v0", max_episode_steps=500, timeout_s=20)
        try:
            assert env.max_episode_steps == env.server_info["max_episode_steps"] == 500
            env.reset(seed=0)
            with pytest.raises(HilrlError, match=r"expected \(4,\)"):
                env.step(np.zeros(7))
            with pytest.raises(HilrlError, match="NaN or inf"):
                env.step(np.array([0.0, np.nan, 0.0, 0.0]))
            with pytest.raises(HilrlError, match=r"seed=-1"):
                env.reset(seed=-1)
        finally:
            env.close()


def test_no_server_gives_a_clear_connection_error():
    with pytest.raises(RobotConnectionError, match="no reply to 'hello'.*`hilrl serve-robot --driver sim`"):
        RemoteArmEnv("tcp://127.0.0.1:9", timeout_s=0.3)


def test_a_remote_config_without_a_server_names_the_readmes_command(tmp_path):
    """`hilrl record sim_configs/pick_cube_remote.yaml` before `hilrl serve-robot --driver sim` was started."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    experiment = yaml.safe_load((root / "sim_configs/pick_cube_remote.yaml").read_text())
    experiment["env"]["remote"] = "tcp://127.0.0.1:9"  # nothing listens there
    config = tmp_path / "remote.yaml"
    config.write_text(yaml.safe_dump(experiment))
    rec = subprocess.run([sys.executable, "-m", "hilrl.cli", "record", str(config), "--episodes", "1", "--out",
                          str(tmp_path / "d.hdf5")], capture_output=True, text=True, timeout=120)
    assert rec.returncode == 2, rec.stdout + rec.stderr
    assert len(rec.stderr.strip().splitlines()) == 1, rec.stderr
    assert "no reply to 'hello'" in rec.stderr and "`hilrl serve-robot --driver sim`" in rec.stderr, rec.stderr
    assert "python -m hardware.server" not in rec.stderr


def test_a_stream_bound_to_all_interfaces_is_reached_at_the_host_already_used():
    from hilrl.envs.remote import stream_address

    assert stream_address("tcp://10.0.0.2:5560", "tcp://0.0.0.0:5561") == "tcp://10.0.0.2:5561"
    assert stream_address("tcp://arm.local:5560", "tcp://[::]:6000") == "tcp://arm.local:6000"
    assert stream_address("tcp://10.0.0.2:5560", "tcp://10.0.0.3:5561") == "tcp://10.0.0.3:5561"  # as reported


def test_record_through_the_server_then_replay_locally(tmp_path):
    """Issue 3 acceptance: `hilrl serve-robot --driver sim` + `hilrl record <remote config>` + `hilrl replay`."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).parents[1]
    robot = yaml.safe_load((root / "hardware/configs/sim.yaml").read_text())
    robot["sim"]["task"] = "hilrl/PickCube-v0"
    robot["sim"]["realtime"] = False
    robot_config = tmp_path / "robot.yaml"
    robot_config.write_text(yaml.safe_dump(robot))
    cli = [sys.executable, "-m", "hilrl.cli"]
    server = subprocess.Popen([*cli, "serve-robot", "--driver", "sim", "--config", str(robot_config),
                               "--bind", "tcp://127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        ready = server.stdout.readline()
        assert "robot server ready" in ready, ready
        address = ready.split("cmd=")[1].split()[0]
        experiment = yaml.safe_load((root / "sim_configs/pick_cube_remote.yaml").read_text())
        experiment["env"]["remote"] = address
        config = tmp_path / "remote.yaml"
        config.write_text(yaml.safe_dump(experiment))
        demos = tmp_path / "d.hdf5"
        rec = subprocess.run([*cli, "record", str(config), "--device", "expert", "--episodes", "3", "--out", str(demos)],
                             capture_output=True, text=True, timeout=300)
        assert rec.returncode == 0, rec.stderr[-2000:]
        assert "success 100%" in rec.stdout
    finally:
        server.terminate()
        assert server.wait(timeout=30) == 0
    rep = subprocess.run([*cli, "replay", str(demos)], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "0 of 3 demos diverged" in rep.stdout


def test_a_config_with_keys_reaches_a_server_that_requires_curve(tmp_path, curve_keys):
    """`env: {remote, client_key, server_key}` is how a user reaches a robot server off loopback."""
    from hilrl.config import ConfigError, validate_config
    from hilrl.envs.make import make_env

    args = ["--config", _sim_config(tmp_path, "hilrl/Reach-v0"), "--require-auth",
            "--server-key", str(curve_keys.server_secret), "--allow-keys", str(curve_keys.allowed)]
    with running_server(*args) as server:
        def env_config(secret):
            return validate_config({"env": {"id": "hilrl/Reach-v0", "remote": server.command_address,
                                            "client_key": str(secret), "server_key": str(curve_keys.server_public)},
                                    "algo": {"name": "bc"}}).env

        env = make_env(env_config(curve_keys.client_secret))
        try:
            obs, _ = env.reset(seed=0)
            assert env.step(np.zeros(4, np.float32))[0]["ee_pos"].shape == (3,)
        finally:
            env.close()
        with pytest.raises(RobotConnectionError, match="refused our CurveZMQ key"):
            make_env(env_config(curve_keys.stranger_secret)).reset(seed=0)
    with pytest.raises(ConfigError, match="set env.remote too"):
        validate_config({"env": {"id": "hilrl/Reach-v0", "client_key": "a", "server_key": "b"}, "algo": {"name": "bc"}})
