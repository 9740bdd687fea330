"""``runtime: {backend: ray, actors: N}``: the distributed learner and its actors as Ray actors.

What runs where. ``hilrl train`` (the driver) joins a Ray cluster (``runtime.address``, else ``RAY_ADDRESS``,
else a Ray it starts for the run and stops after it), records the run folder (config, demos) as every run does,
then starts

* one :class:`LearnerWorker`: the ZMQ learner of :mod:`hilrl.runtime.distributed.learner`, unchanged, on the
  driver's node (the run folder is there), asking Ray for a GPU when ``algo.device`` wants one;
* ``runtime.actors`` :class:`ActorWorker`: each the actor of :mod:`hilrl.runtime.distributed.actor`, a step
  source with its own seed stream (actor ``i`` is stream ``i + 1`` of :mod:`hilrl.runtime.seeds`), its folder
  ``OUT/actors/actorI`` on the node Ray put it on, spread over the cluster's nodes.

Ray places, starts and restarts the processes; transitions and weights travel over the existing transport
(:mod:`hilrl.runtime.distributed.transport`: ZMQ, msgpack with raw numpy buffers), not through Ray's object
store. Why: the transport already holds the run's durability rule (a learner acks a batch only once it is in
its log, an actor spools each batch before sending and re-sends what was not acked), which a Ray call would have
to rebuild; it is the same path a real arm's ``hilrl actor`` joins over CurveZMQ; and a ``ray.get`` round trip
per batch costs more than a ZMQ send (``benchmarks/scale_out.py`` measures both per batch). Ray adds what
the ZMQ processes lacked: placement on a cluster, and restarts.

Faults. Both kinds of worker are Ray actors with ``max_restarts`` and ``max_task_retries``: an actor process
killed (SIGKILL, a node gone) is started again by Ray and resumes from its folder (spool, acked seq), and the
learner killed is started again, binds the same address, and resumes from its newest checkpoint plus its log
(:class:`~hilrl.runtime.distributed.learner.Learner`), while the actors keep acting up to ``runtime.max_unacked``
un-acked steps and then wait for it. Each worker start appends a line to ``OUT/ray/learner_starts.jsonl`` or
``OUT/ray/actor_starts.jsonl`` (pid, the acked seqs it resumed with), and ``OUT/ray/run.json`` sums up the run:
starts, the acked seqs the driver saw before each learner restart and after it, and the acked transitions lost,
``lost_acked`` = acked - stored (a learner acks a step only as it stores it, except when an actor was acked
further than the learner holds, :meth:`~hilrl.runtime.distributed.learner.Learner.rejoin`; 0 when the rule held).
(Ray's fault-tolerance model: https://docs.ray.io/en/latest/ray-core/fault_tolerance/actors.html)
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from hilrl.config import ExperimentConfig
from hilrl.errors import HilrlError
from hilrl.runtime.evaluate import EvalResult
from hilrl.runtime.progress import console, make_progress
from hilrl.runtime.run import RunFolder

RESTARTS = 20  # per Ray actor; a worker that dies more often than this has a cause a restart will not fix
STATUS_PERIOD_S = 1.0
RAY_DIR = "ray"
# what every worker process gets, whatever node it is on (the house rules for processes sharing CPUs)
WORKER_ENV = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HilrlError("Ray is not installed (runtime.backend: ray, or --backend ray of hilrl sweep and the reward "
                         "search); pip install 'hilrl[ray]'") from None
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> Iterator[Any]:
    """Ray joined for the block: ``address`` (``ray start --head`` prints it), else ``RAY_ADDRESS``, else a local
    Ray with ``num_cpus`` logical CPUs started here and stopped after (no dashboard). Already initialised: used as
    it is. ``RAY_AUTH_MODE`` defaults to ``disabled``, as a cluster started by the README's command has it.
    ``log_to_driver=False`` keeps the workers' output off this process's console (a live table drawn there)."""
    ray = import_ray()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            if address:
                ray.init(address=address, log_to_driver=log_to_driver, configure_logging=False)
            else:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                         configure_logging=False)
        except ConnectionError as exc:
            raise HilrlError(f"cannot join the Ray cluster at {address!r} ({exc}); start one with `ray start --head "
                             "--port 6379` and pass its address (runtime.address or RAY_ADDRESS), or unset both to "
                             "start a local Ray for the run") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def record_start(path: Path, facts: dict[str, Any]) -> None:
    """Append one JSON line for a worker process that started (a restart adds another)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(facts) + "\n")


def read_starts(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def worker_env() -> dict[str, str]:
    """Environment variables for worker processes: this process's values of :data:`WORKER_ENV`'s names."""
    return {name: os.environ.get(name, default) for name, default in WORKER_ENV.items()}


def wants_gpu(config: ExperimentConfig, cluster_gpus: float) -> bool:
    """The learner asks Ray for a GPU when ``algo.device`` names CUDA, or is ``auto`` on a cluster that has one."""
    device = str(getattr(config.algo, "device", "cpu"))
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def learner_bind(config: ExperimentConfig, nodes: int, node_ip: str) -> str:
    """The learner's fixed transition address: ``runtime.bind`` with a free port for ``*``, so that a restarted
    learner binds the same address its actors know. On a cluster of several nodes a loopback host becomes this
    node's address (the learner then needs ``runtime.learner_secret_key``: CurveZMQ off loopback)."""
    parts = urlsplit(config.runtime.bind)
    host, port = parts.hostname or "127.0.0.1", parts.netloc.rsplit(":", 1)[-1]
    if nodes > 1 and host in ("127.0.0.1", "localhost", "::1"):
        host = node_ip
    if port == "*":
        port = str(free_port(host if host != "0.0.0.0" else "127.0.0.1"))
    return f"tcp://{host}:{port}"


class LearnerWorker:
    """The learner as a Ray actor (:class:`~hilrl.runtime.distributed.learner.Learner`); its ``run`` blocks, a
    second thread answers :meth:`status`.

    :param experiment: the config as dumped (``model_dump(mode="json")``), validated again in this process
    :param out: the run folder the driver recorded (absolute)
    :param bind: the fixed transition address (:func:`learner_bind`)
    :param cwd: the driver's working directory, for the config's relative paths
    """

    def __init__(self, experiment: dict[str, Any], out: str, bind: str, cwd: str) -> None:
        import torch

        from hilrl.runtime.distributed.learner import Learner

        os.chdir(cwd)
        config = ExperimentConfig.model_validate(experiment)
        torch.set_num_threads(config.train.threads)
        folder = RunFolder(config, out, record=False)
        self.learner = Learner(config, folder, bind=bind, demo_episodes=folder.demo_episodes(False),
                               show_progress=False)
        gpus = import_ray().get_runtime_context().get_accelerator_ids().get("GPU", [])
        self.start = {"pid": os.getpid(), "time": time.time(), "acked": dict(self.learner.acked),
                      "env_steps": self.learner.counters["env_steps"], "gpus": list(gpus)}
        record_start(Path(out) / RAY_DIR / "learner_starts.jsonl", self.start)

    def address(self) -> str:
        return self.learner.address

    def status(self) -> dict[str, Any]:
        """Counters, acked seqs per actor and this process's start (a copy; read while :meth:`run` works)."""
        return {"counters": dict(self.learner.counters), "acked": dict(self.learner.acked), "start": self.start}

    def run(self) -> EvalResult:
        try:
            result = self.learner.run()
        finally:
            self.learner.close()
        if result is None:
            raise HilrlError("the Ray learner stored its transitions but did not evaluate (env.remote is set)")
        return result


class ActorWorker:
    """One actor as a Ray actor (:class:`~hilrl.runtime.distributed.actor.Actor`); :meth:`run` acts until the
    learner is done. Ray runs its calls on the process's main thread, where the actor sets its signal handlers.

    :param experiment: the config as dumped, validated again in this process
    :param out: the run folder; this actor's folder (spool, weights, acked seq; resumed after a restart) is
        ``OUT/actors/actor{index}`` on the node Ray runs it on
    :param learner: the learner's transition address
    :param index: its seed stream is ``index + 1`` (:mod:`hilrl.runtime.seeds`); its id ``actor{index}``
    :param cwd: the driver's working directory, used when this node has it (relative paths of the config)
    """

    def __init__(self, experiment: dict[str, Any], out: str, learner: str, index: int, cwd: str) -> None:
        import torch

        from hilrl.runtime.distributed.actor import Actor

        if os.path.isdir(cwd):
            os.chdir(cwd)
        config = ExperimentConfig.model_validate(experiment)
        torch.set_num_threads(config.train.threads)
        folder = Path(out) / "actors" / f"actor{index}"
        self.actor = Actor(config, folder, learner, actor_id=f"actor{index}", index=index)
        record_start(Path(out) / RAY_DIR / "actor_starts.jsonl",
                     {"index": index, "pid": os.getpid(), "time": time.time(), "acked": self.actor.state["acked"]})

    def pid(self) -> int:
        return os.getpid()

    def run(self) -> dict[str, Any]:
        try:
            return self.actor.run()
        finally:
            self.actor.close()


class RayRun:
    """A run's learner and actors on Ray: :meth:`start` them, :meth:`wait` for the result; :meth:`status`,
    :meth:`actor_pids` and :meth:`learner_pid` serve tests and benchmarks that kill workers.

    :param config: the experiment (``runtime.backend: ray``)
    :param run: the run folder, already recorded (config, demos) by :func:`hilrl.runtime.train.train`
    :param ray: the joined ``ray`` module (:func:`ray_session`)
    """

    def __init__(self, config: ExperimentConfig, run: RunFolder, ray: Any) -> None:
        self.config, self.ray, self.out = config, ray, run.out.resolve()
        self.learner: Any = None
        self.actors: list[Any] = []
        self.actor_runs: list[Any] = []
        self.learner_run: Any = None
        self.last_status: dict[str, Any] | None = None
        self.restarts: list[dict[str, Any]] = []  # learner restarts the driver saw: acked before and after

    def start(self) -> None:
        ray, config = self.ray, self.config
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        resources = ray.cluster_resources()
        needed = 1 + config.runtime.actors
        if resources.get("CPU", 0) < needed:
            raise HilrlError(f"the Ray cluster has {resources.get('CPU', 0):g} CPUs, the run asks for {needed} (the "
                             f"learner and runtime.actors {config.runtime.actors}, one each); start Ray with more "
                             f"logical CPUs (ray start --head --num-cpus {needed}) or lower runtime.actors")
        gpu = wants_gpu(config, resources.get("GPU", 0))
        node_id = ray.get_runtime_context().get_node_id()
        here_gpus = next((n["Resources"].get("GPU", 0) for n in nodes if n["NodeID"] == node_id), 0)
        if gpu and here_gpus < 1:
            raise HilrlError(f"algo.device is {config.algo.device!r}: the learner asks Ray for a GPU, but this node "
                             f"(where the learner runs, beside the run folder) has none (the cluster has "
                             f"{resources.get('GPU', 0):g}); run hilrl train on a node with a GPU (ray start ... "
                             "--num-gpus 1 there) or set algo.device: auto or cpu")
        bind = learner_bind(config, len(nodes), ray.util.get_node_ip_address())
        experiment, cwd = config.model_dump(mode="json"), os.getcwd()
        env = {"env_vars": worker_env()}
        here = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
        learner_class = ray.remote(LearnerWorker)
        self.learner = learner_class.options(
            num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=RESTARTS, max_task_retries=-1, max_concurrency=2,
            scheduling_strategy=here, runtime_env=env).remote(experiment, str(self.out), bind, cwd)
        address = ray.get(self.learner.address.remote())
        actor_class = ray.remote(ActorWorker)
        for index in range(config.runtime.actors):
            self.actors.append(actor_class.options(
                num_cpus=1, max_restarts=RESTARTS, max_task_retries=-1, scheduling_strategy="SPREAD",
                runtime_env=env).remote(experiment, str(self.out), address, index, cwd))
        self._pids = ray.get([actor.pid.remote() for actor in self.actors])
        self.actor_runs = [actor.run.remote() for actor in self.actors]
        self.learner_run = self.learner.run.remote()
        console.print(f"Ray: learner on {address}{' with a GPU' if gpu else ''}, {len(self.actors)} actors, "
                      f"{len(nodes)} node(s)", soft_wrap=True)

    def actor_pids(self) -> list[int]:
        """The actors' first processes' ids (a restarted actor has another)."""
        return list(self._pids)

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The learner's :meth:`LearnerWorker.status`, or ``None`` while it is down or restarting. A new learner
        process seen here is recorded with the acked seqs the driver saw last before it."""
        ray = self.ray
        try:
            status = ray.get(self.learner.status.remote(), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None
        previous = self.last_status
        if previous is not None and status["start"]["pid"] != previous["start"]["pid"]:
            before, after = previous["acked"], status["start"]["acked"]
            self.restarts.append({"pid": status["start"]["pid"], "acked_seen_before": before,
                                  "acked_resumed": after})
        self.last_status = status
        return status

    def learner_pid(self) -> int | None:
        status = self.status()
        return None if status is None else status["start"]["pid"]

    def wait(self, show_progress: bool = True) -> EvalResult:
        """Follow the learner until its run ends; then collect the actors and write ``OUT/ray/run.json``."""
        ray, training = self.ray, self.config.train
        with make_progress(not show_progress) as bar:
            task = bar.add_task(f"ray learner {self.config.env.id}", total=training.steps, stats="")
            shown = (-1, -float("inf"))  # env steps and time last shown: a line per change, or per 10 s of updates
            while not ray.wait([self.learner_run], timeout=STATUS_PERIOD_S)[0]:
                status = self.status()
                if status is None:
                    continue
                counters = status["counters"]
                if counters["env_steps"] != shown[0] or time.monotonic() - shown[1] > 10 * STATUS_PERIOD_S:
                    shown = (counters["env_steps"], time.monotonic())
                    bar.update(task, completed=counters["env_steps"],
                               stats=f"{counters['updates']} updates  actors {status['acked']}")
        result = ray.get(self.learner_run)
        actors = ray.get(self.actor_runs, timeout=120)
        self.write_summary(result, actors)
        return result

    def write_summary(self, result: EvalResult, actors: list[dict[str, Any]]) -> None:
        metrics = json.loads((self.out / "metrics.json").read_text())
        acked, stored = sum(metrics.get("acked", {}).values()), metrics.get("env_steps")
        summary = {
            "actors": actors,
            "learner_starts": len(read_starts(self.out / RAY_DIR / "learner_starts.jsonl")),
            "actor_starts": len(read_starts(self.out / RAY_DIR / "actor_starts.jsonl")),
            "learner_restarts_seen": self.restarts,
            # a learner counts a step as acked only as it stores it, except when an actor says it was acked further
            # than this learner holds (Learner.rejoin: the steps between are gone): so acked - stored is what was lost
            "acked": acked,
            "stored": stored,
            "lost_acked": acked - stored,
            "success_rate": result.success_rate,
        }
        tmp = self.out / RAY_DIR / "run.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, self.out / RAY_DIR / "run.json")

    def stop(self) -> None:
        for worker in [*self.actors, self.learner]:
            if worker is not None:
                self.ray.kill(worker, no_restart=True)


def train_ray(config: ExperimentConfig, run: RunFolder, show_progress: bool = True) -> EvalResult:
    """`hilrl train` with ``runtime.backend: ray``: the learner and ``runtime.actors`` actors as Ray actors on the
    cluster at ``runtime.address`` / ``RAY_ADDRESS`` (else a local Ray for this run); the same run folder,
    checkpoints and resume as ``runtime: distributed``."""
    with ray_session(config.runtime.address, num_cpus=1 + config.runtime.actors) as ray:
        fleet = RayRun(config, run, ray)
        try:
            fleet.start()
            return fleet.wait(show_progress)
        finally:
            fleet.stop()
