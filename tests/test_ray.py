"""``runtime: {backend: ray}``: `hilrl train` on a Ray cluster started as the README says, its resume, SIGKILL
of an actor and of the learner with 0 acknowledged transitions lost, and a node that leaves mid-run.

The cluster is started here (``ray start --head --block`` on loopback, a free port, its own temp dir so no other
process finds it) and stopped by ending that command, which stops every process it started.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_node(*args: str) -> subprocess.Popen:
    """`ray start ... --block` in a session of its own: SIGTERM stops what it started, SIGKILL to the session
    takes the node away at once (its raylet, object store and workers)."""
    return subprocess.Popen(["ray", "start", *args, "--block"],
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, executable=str(Path(sys.executable).parent / "ray"),
                            start_new_session=True)


def stop_node(node: subprocess.Popen) -> None:
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)  # --block: stops the processes it started
        node.wait(60)


@contextmanager
def head_node(cpus: int, gpus: int = 0) -> Iterator[str]:
    """`ray start --head` on loopback with ``cpus`` logical CPUs and ``gpus`` logical GPUs; yields its address
    (what RAY_ADDRESS takes)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="hr-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    head = start_node("--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", str(cpus),
                      "--num-gpus", str(gpus), "--temp-dir", temp, "--include-dashboard", "false")
    deadline = time.monotonic() + 90
    while not list(Path(temp).glob("session_latest/logs/raylet.out")):  # the node is up once its raylet logs
        assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(0.5)
    time.sleep(2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_node(head)


@pytest.fixture(scope="module")
def ray_cluster():
    with head_node(cpus=3) as address:
        yield address


def write_config(path: Path, steps: int, **runtime) -> Path:
    raw = yaml.safe_load((REPO / "sim_configs" / "reach_ray.yaml").read_text())
    raw["demos"]["episodes"] = 2
    raw["algo"].update(hidden=[32, 32], batch_size=32, utd=1)
    raw["train"].update(steps=steps, learning_starts=100, eval_episodes=2, checkpoint_every=150)
    raw["runtime"].update(max_unacked=40, ack_timeout_s=1.0, **runtime)
    path.write_text(yaml.safe_dump(raw))
    return path


def hilrl_train(config: Path, run: Path, address: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", MUJOCO_GL="egl", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(run), *args],
                            env=env, stdout=open(run.parent / f"{run.name}.log", "ab"), stderr=subprocess.STDOUT)


def starts(run: Path, who: str) -> list[dict]:
    path = run / "ray" / f"{who}_starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"hilrl train exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finished(proc: subprocess.Popen, run: Path) -> dict:
    assert proc.wait(300) == 0, (run.parent / f"{run.name}.log").read_text()[-3000:]
    return json.loads((run / "ray" / "run.json").read_text())


@pytest.mark.slow  # the fault test below runs `hilrl train` on the cluster in CI; this adds the --steps resume
def test_hilrl_train_runs_on_a_ray_cluster_and_continues_the_run(ray_cluster, tmp_path):
    config, run = write_config(tmp_path / "reach_ray.yaml", steps=300), tmp_path / "run"
    summary = finished(hilrl_train(config, run, ray_cluster), run)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 300 and metrics["runtime"] == "distributed"
    assert summary["stored"] == summary["acked"] == 300 and summary["lost_acked"] == 0
    assert sorted(a["actor"] for a in summary["actors"]) == ["actor0", "actor1"]
    assert all(a["steps"] > 0 and a["weights_version"] > 0 for a in summary["actors"])  # both acted, got weights
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["backend"] == "ray"

    # the same command with a higher total continues the run from its checkpoint: a learner start that resumed
    summary = finished(hilrl_train(config, run, ray_cluster, "--steps", "400"), run)
    learner = starts(run, "learner")
    assert len(learner) == 2 and learner[1]["env_steps"] == 300 and sum(learner[1]["acked"].values()) == 300
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 400 == summary["stored"] == summary["acked"]


def test_sigkill_of_an_actor_and_of_the_learner_loses_no_acked_transition(ray_cluster, tmp_path):
    steps = 900
    config, run = write_config(tmp_path / "reach_ray.yaml", steps=steps), tmp_path / "run"
    proc = hilrl_train(config, run, ray_cluster)
    try:
        wait_for(lambda: len(starts(run, "actor")) == 2 and checkpoint_steps(run), "a first checkpoint", proc)
        time.sleep(1.0)  # mid-run: between checkpoints, with acked steps only in the learner's log
        learner = starts(run, "learner")[0]
        actor = next(s for s in starts(run, "actor") if s["index"] == 0)
        os.kill(learner["pid"], signal.SIGKILL)
        os.kill(actor["pid"], signal.SIGKILL)
        wait_for(lambda: len(starts(run, "learner")) == 2, "Ray to restart the killed learner", proc)
        wait_for(lambda: len(starts(run, "actor")) == 3, "Ray to restart the killed actor", proc)
        restarted = starts(run, "actor")[-1]
        assert restarted["index"] == 0 and restarted["pid"] != actor["pid"]
        summary = finished(proc, run)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    resumed = starts(run, "learner")[1]
    assert sum(resumed["acked"].values()) == resumed["env_steps"] > 0  # checkpoint + log: every acked step back
    for seen in summary["learner_restarts_seen"]:  # what the driver saw acked before the kill, the restart holds
        assert all(resumed["acked"].get(actor, 0) >= seq for actor, seq in seen["acked_seen_before"].items())
    assert summary["learner_starts"] == 2 and summary["actor_starts"] == 3
    assert summary["stored"] == summary["acked"] == steps
    assert summary["lost_acked"] == 0


@pytest.mark.slow  # 51 s under load; the Ray run's own actors are covered in CI by the SIGKILL test
def test_an_arms_hilrl_actor_joins_a_ray_run_over_curvezmq(ray_cluster, tmp_path, curve_keys):
    """A real arm's computer runs `hilrl actor` beside it (here a sim env stands for the arm) and joins the Ray
    run's learner over CurveZMQ, at the address the config fixes (runtime.bind; the run also writes it to
    OUT/learner_address.txt). Started first, the arm says hello until the learner is up."""
    keys = {"learner_secret_key": str(curve_keys.server_secret), "allow_keys": str(curve_keys.allowed),
            "actor_secret_key": str(curve_keys.client_secret), "learner_public_key": str(curve_keys.server_public)}
    address = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path / "reach_ray.yaml", steps=900, actors=1, bind=address, **keys)
    run = tmp_path / "run"
    arm = subprocess.Popen([sys.executable, "-m", "hilrl.cli", "actor", str(config), "--learner", address,
                            "--out", str(tmp_path / "arm"), "--id", "arm", "--index", "5", "--quiet"],
                           env=dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1"),
                           stdout=open(tmp_path / "arm.log", "ab"), stderr=subprocess.STDOUT)
    proc = hilrl_train(config, run, ray_cluster)
    try:
        summary = finished(proc, run)
        assert arm.wait(60) == 0, (tmp_path / "arm.log").read_text()[-2000:]
    finally:
        for process in (proc, arm):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert (run / "learner_address.txt").read_text().strip() == address
    acked = json.loads((run / "metrics.json").read_text())["acked"]
    assert set(acked) == {"actor0", "arm"} and acked["arm"] > 0, acked
    assert summary["stored"] == summary["acked"] == 900 and summary["lost_acked"] == 0


def test_a_learner_that_wants_a_gpu_is_refused_on_a_node_without_one(ray_cluster, tmp_path):
    config, run = write_config(tmp_path / "reach_ray.yaml", steps=300), tmp_path / "run"
    proc = hilrl_train(config, run, ray_cluster, "--set", "algo.device=cuda")
    assert proc.wait(120) != 0
    log = (tmp_path / "run.log").read_text()
    assert "asks Ray for a GPU" in log and "--num-gpus 1" in log and "algo.device: auto or cpu" in log


@pytest.mark.slow  # a cluster of its own (40 s); the refusal above runs in CI
def test_the_learner_asks_ray_for_a_gpu_when_algo_device_wants_one(tmp_path):
    """``algo.device: auto`` on a cluster with a GPU: Ray gives the learner one (a logical GPU here: this machine
    has none, so torch stays on the CPU, as ``auto`` does without CUDA), and no actor takes it."""
    config, run = write_config(tmp_path / "reach_ray.yaml", steps=200), tmp_path / "run"
    with head_node(cpus=3, gpus=1) as address:
        summary = finished(hilrl_train(config, run, address), run)
    assert starts(run, "learner")[0]["gpus"] == ["0"]
    assert summary["stored"] == 200 and summary["lost_acked"] == 0


def test_hilrl_sweep_runs_its_grid_as_ray_tasks_on_the_cluster(ray_cluster, tmp_path):
    out = tmp_path / "sweep"
    small = ["train.steps=100", "train.learning_starts=50", "demos.episodes=2", "train.eval_episodes=2",
             "train.eval_every=0", "train.video=false", "algo.hidden=[32,32]", "algo.batch_size=32"]
    command = [sys.executable, "-m", "hilrl.cli", "sweep", str(REPO / "sim_configs" / "reach_sac.yaml"), "--seeds", "0",
               "--set", "algo.utd=1,2", *[arg for text in small for arg in ("--set", text)], "--out", str(out),
               "--backend", "ray", "--address", ray_cluster]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled", MUJOCO_GL="egl", OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "ray" and [row["setting"] for row in summary["rows"]] == ["algo.utd=1", "algo.utd=2"]
    for utd in (1, 2):
        assert json.loads((out / f"algo.utd={utd}" / "seed_0" / "metrics.json").read_text())["env_steps"] == 100


def alive_nodes(address: str) -> int:
    result = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, log_to_driver=False); "
                             "print(sum(n['Alive'] for n in ray.nodes()))" % address], capture_output=True, text=True,
                            env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=60)
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_node_that_leaves_mid_run_is_survived(tmp_path, curve_keys):
    """The head has one CPU (the learner, kept on the driver's node); the actors run on a second node, which is
    killed with everything on it (SIGKILL to its processes, as a machine that loses power); then a third node
    joins. Ray restarts both actors on the third node; they resume from their folders (one file system here, as
    a shared one on a cluster) and the run ends with every acked step stored. With several nodes the learner
    binds the node's address, off loopback, so the run has CurveZMQ keys as docs/RAY.md says."""
    steps = 900
    keys = {"learner_secret_key": str(curve_keys.server_secret), "allow_keys": str(curve_keys.allowed),
            "actor_secret_key": str(curve_keys.client_secret), "learner_public_key": str(curve_keys.server_public)}
    config, run = write_config(tmp_path / "reach_ray.yaml", steps=steps, **keys), tmp_path / "run"
    with head_node(cpus=1) as address:
        # other loopback addresses, so that the driver's node (the learner's) is the head's, at 127.0.0.1
        leaving = start_node("--address", address, "--node-ip-address", "127.0.0.2", "--num-cpus", "2")
        joining = None
        try:
            wait_for(lambda: alive_nodes(address) == 2, "the second node", leaving, timeout=90)
            proc = hilrl_train(config, run, address)
            wait_for(lambda: len(starts(run, "actor")) == 2 and checkpoint_steps(run), "a first checkpoint", proc)
            os.killpg(leaving.pid, signal.SIGKILL)
            for pid in [s["pid"] for s in starts(run, "actor")]:  # the node's workers go with it
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            joining = start_node("--address", address, "--node-ip-address", "127.0.0.3", "--num-cpus", "2")
            wait_for(lambda: len(starts(run, "actor")) == 4, "Ray to restart both actors on the third node", proc,
                     timeout=240)
            summary = finished(proc, run)
        finally:
            if "proc" in locals() and proc.poll() is None:
                proc.kill()
                proc.wait()
            for node in (joining, leaving):
                if node is not None:
                    stop_node(node)

    assert summary["learner_starts"] == 1 and summary["actor_starts"] == 4
    assert sorted(s["index"] for s in starts(run, "actor")[2:]) == [0, 1]
    assert summary["stored"] == summary["acked"] == steps and summary["lost_acked"] == 0
