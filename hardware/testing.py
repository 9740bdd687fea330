"""Start a robot server subprocess for tests and benchmarks, and always stop it.

``with running_server("--config", path) as server:`` yields a :class:`ServerProcess`
once the server has printed its ready line (command and stream addresses).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerProcess:
    process: subprocess.Popen
    command_address: str
    stream_address: str
    stderr_path: Path

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Signal the server and wait for it; kill it if it does not stop in time. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def running_server(*args: str, startup_timeout_s: float = 60.0) -> Iterator[ServerProcess]:
    """Run ``python -m hardware.server --bind tcp://127.0.0.1:0 *args`` until the block ends."""
    argv = [sys.executable, "-m", "hardware.server", "--bind", "tcp://127.0.0.1:0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.NamedTemporaryFile("w", prefix="robot-server-", suffix=".log", delete=False) as log:
        stderr_path = Path(log.name)
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO_ROOT, env=env)
    server = None
    try:
        line = _read_line(process, startup_timeout_s)
        if not line.startswith("robot server ready:"):
            process.kill()
            process.wait()
            raise RuntimeError(f"robot server did not start (exit {process.returncode}):\n{stderr_path.read_text()}")
        fields = dict(part.split("=", 1) for part in line.split()[3:])
        server = ServerProcess(process, fields["cmd"], fields["state"], stderr_path)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        stderr_path.unlink(missing_ok=True)


def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=0.1):
                return process.stdout.readline()
            if process.poll() is not None:
                return ""
        return ""
    finally:
        selector.close()
