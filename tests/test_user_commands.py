"""The commands a config file's header tells a user to run, run exactly as written, as real processes."""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hilrl.cli"]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ready_line(process: subprocess.Popen, timeout_s: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.2):
                return process.stdout.readline()
        return ""
    finally:
        selector.close()


def test_pick_cube_remote_header_commands_record_two_expert_episodes(tmp_path):
    """sim_configs/pick_cube_remote.yaml: `hilrl serve-robot --driver sim`, then `hilrl record ... --episodes 2`."""
    header = (ROOT / "sim_configs/pick_cube_remote.yaml").read_text().splitlines()[0]
    assert "`hilrl serve-robot --driver sim`" in header and "tcp://127.0.0.1:5555" in header
    for port in (5555, 5556):  # commands, and the state stream on the next port
        if not _port_free(port):
            pytest.skip(f"127.0.0.1:{port} is taken by another program; the config's header binds tcp://127.0.0.1:5555")
    watched = [ROOT / "hardware/configs/sim.yaml", ROOT / "sim_configs/pick_cube_remote.yaml"]
    before = [path.read_bytes() for path in watched]
    server_log = tmp_path / "server.log"
    with open(server_log, "w") as log:
        server = subprocess.Popen([*CLI, "serve-robot", "--driver", "sim"], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=log, text=True)
    try:
        ready = _ready_line(server, timeout_s=60)
        assert "robot server ready: driver=sim cmd=tcp://127.0.0.1:5555" in ready, ready + server_log.read_text()
        demos = tmp_path / "demos.hdf5"
        start = time.monotonic()
        record = subprocess.run([*CLI, "record", "sim_configs/pick_cube_remote.yaml", "--episodes", "2", "--out", str(demos)],
                                cwd=ROOT, capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - start
        assert record.returncode == 0, record.stdout[-2000:] + record.stderr[-2000:]
        assert f"recorded 2 episodes to {demos}: success 100%" in record.stdout, record.stdout
        assert seconds < 60, f"2 PickCube episodes at the sim's real-time 10 Hz took {seconds:.0f}s"
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: serve-robot passes it on to the server, which stops cleanly
        code = server.wait(timeout=30)
        server.stdout.close()
    log_text = server_log.read_text()
    assert code == 0, log_text
    assert "now serving hilrl/PickCube-v0" in log_text and "stopped; arm holding" in log_text
    assert [path.read_bytes() for path in watched] == before, "the commands changed no config file"

    from hilrl.data.hdf5 import DemoFile
    from hilrl.envs import PickCubeEnv

    with DemoFile(demos) as recorded:
        assert recorded.env_args["env_name"] == "hilrl/PickCube-v0" and len(recorded) == 2
        for episode in recorded:
            assert episode.attrs["device"] == "expert" and episode.attrs["success"]
            assert 0 < len(episode) <= PickCubeEnv.default_max_episode_steps and episode.terminated[-1]
            assert episode.states is not None, "the sim state travels with every step"
            terms = getattr(episode, "reward_terms", {})
            assert not terms or set(terms) == set(PickCubeEnv.reward_terms)  # (hdf5 lists them by name)
