"""Scale-out: env steps/s collected and learner updates/s with 1, 2, 4 Ray actors vs the ZMQ actor/learner vs the
local loop, one transition batch through ZMQ vs through a Ray call, and a sweep's wall time on Ray vs the local pool.

    python benchmarks/scale_out.py                 # the issue's table, ~12 min on 2 quiet cores
    python benchmarks/scale_out.py --quick         # fewer steps and rows, for a look

Every run is `hilrl train` on Reach (state, SAC) as a user runs it, in its own process. Rates are read from the run
folder's checkpoints (each ``step_N.pt`` counts its env steps and updates, its file time says when), from the first
checkpoint to the last, so process start-up, Ray's start and the final evaluation are left out.

* collection: ``train.learning_starts = train.steps``: no row updates (the learner is throttled equally, to 0), so
  the figure is how fast acting and carrying transitions goes; the goal is 2 Ray actors >= 1.6x one Ray actor.
  Each collection row is the median of ``--repeats`` runs (their range beside it): one run of a row varied by up
  to 2x between runs on this machine (a 2-actor Ray row gave 1160 and 2254 env steps/s minutes apart).
* updates: 1000 env steps, ``runtime.max_update_ratio: null`` (the learner updates freely, HIL-SERL's way)
  after 100 steps, with the env steps/s collected meanwhile; the local loop updates once per step, as it always does.
* transport: one 64-step batch of Reach's transitions (msgpack + raw numpy, the actors' wire format) sent and
  acknowledged over ZMQ on loopback, and the same arrays passed to a Ray actor's method and its reply awaited.
* sweep: 3 seeds of a small run, 2 at a time: a plain process pool calling ``train`` (what the benchmark scripts'
  ``--workers`` do), ``hilrl sweep --backend local`` and ``hilrl sweep --backend ray`` (a local Ray it starts);
  the goal is Ray's wall <= 1.1x the plain pool's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
ENV.pop("RAY_ADDRESS", None)  # every Ray row starts its own local Ray: the same for each


def experiment(steps: int, learning_starts: int, runtime: dict | str) -> dict:
    return {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 2},
        "algo": {"name": "sac", "hidden": [256, 256], "obs_keys": ["ee_pos", "object"]},
        "train": {"steps": steps, "learning_starts": learning_starts, "eval_episodes": 2, "video": False,
                  "checkpoint_every": max(steps // 12, 50), "log_every": 100},
        "runtime": runtime,
    }


def rows(actors: list[int]) -> list[tuple[str, dict | str]]:
    found: list[tuple[str, dict | str]] = [("local loop", "local")]
    found += [(f"ZMQ, {n} actor{'s' * (n > 1)}", {"mode": "distributed", "actors": n, "bind": "tcp://127.0.0.1:*"})
              for n in (1, 2)]
    found += [(f"Ray, {n} actor{'s' * (n > 1)}", {"backend": "ray", "actors": n, "bind": "tcp://127.0.0.1:*"})
              for n in actors]
    return found


def checkpoint_rates(run: Path, actors: int) -> tuple[float, float]:
    """(env steps/s, updates/s) from the first checkpoint that every actor had sent to (all ``actors`` in its
    acked seqs: an actor process starting late does not count as slow collection) to the last."""
    import torch

    points = []
    for path in (run / "checkpoints").glob("step_*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if len(state.get("acked", {})) >= actors:  # the local loop's checkpoints have no acked: actors is 0
            counters = state["counters"]
            points.append((path.stat().st_mtime, counters["env_steps"], counters["updates"]))
    points.sort()
    if len(points) < 3:
        raise SystemExit(f"{run}: {len(points)} checkpoints with every actor in; the rates need 3 or more "
                         "(more --steps)")
    (t0, s0, u0), (t1, s1, u1) = points[0], points[-1]
    return (s1 - s0) / (t1 - t0), (u1 - u0) / (t1 - t0)


def train_row(raw: dict, folder: Path) -> tuple[float, float, float]:
    actors = 0 if raw["runtime"] == "local" else raw["runtime"]["actors"]
    folder.mkdir(parents=True)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hilrl.cli", "train", str(config), "--out", str(folder / "run")],
                            env=ENV, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{folder}: hilrl train failed\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return (*checkpoint_rates(folder / "run", actors), time.perf_counter() - started)


# ---------------------------------------------------------------- the machine's own ceiling


def env_steps_alone(seconds: float) -> int:
    """Reach stepped with random actions in this process for ``seconds`` (no policy, no transport): the work an
    actor cannot avoid."""
    from hilrl.config import EnvConfig
    from hilrl.envs.make import make_env

    env = make_env(EnvConfig(id="hilrl/Reach-v0"))
    env.reset(seed=0)
    steps, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            env.reset()
    env.close()
    return steps


def ceiling(processes: int, seconds: float = 10.0) -> float:
    """Env steps/s of ``processes`` processes stepping Reach side by side: what 2 actors could reach at most here
    (2 cores that are really 2, with nothing else running, give 2x one)."""
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(env_steps_alone, [0.5] * processes))  # start-up and imports out of the measurement
        return sum(pool.map(env_steps_alone, [seconds] * processes)) / seconds


# ---------------------------------------------------------------- transport: one batch, acknowledged


def reach_batch(steps: int = 64) -> dict:
    """What a 64-step batch of Reach's state transitions holds (shapes and dtypes of the actors' messages)."""
    rng = np.random.default_rng(0)
    obs = {"ee_pos": rng.normal(size=(steps, 3)).astype(np.float32), "object": rng.normal(size=(steps, 3)).astype(
        np.float32)}
    return {"obs": obs, "next_obs": {k: v.copy() for k, v in obs.items()},
            "action": rng.normal(size=(steps, 4)).astype(np.float32), "reward": rng.normal(size=steps).astype(
                np.float32), "terminated": np.zeros(steps, bool), "truncated": np.zeros(steps, bool),
            "intervened": np.zeros(steps, bool)}


def zmq_ack_server(address: str, count: int) -> None:
    import zmq

    from hilrl.envs.protocol import decode, encode

    socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.bind(address)
    for _ in range(count):
        identity, *frames = socket.recv_multipart(copy=False)
        message = decode(frames)
        socket.send_multipart([identity, *encode({"kind": "ack", "acked": len(message["t"]["reward"])})])
    socket.close(linger=0)


def transport_costs(count: int) -> tuple[float, float]:
    """Microseconds per 64-step batch sent and acknowledged: over ZMQ (another process), through a Ray call."""
    import zmq

    from hilrl.envs.protocol import decode, encode
    from hilrl.runtime.distributed.ray_backend import ray_session

    batch = reach_batch()
    port = 20000 + os.getpid() % 20000
    address = f"tcp://127.0.0.1:{port}"
    server = multiprocessing.get_context("spawn").Process(target=zmq_ack_server, args=(address, count + 20))
    server.start()
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(address)
    for i in range(count + 20):  # 20 to warm up
        if i == 20:
            started = time.perf_counter()
        dealer.send_multipart(encode({"kind": "transitions", "t": batch}), copy=False)
        decode(dealer.recv_multipart(copy=False))
    zmq_us = (time.perf_counter() - started) / count * 1e6
    dealer.close(linger=0)
    server.join()

    class Store:
        def store(self, t: dict) -> int:
            return len(t["reward"])

    with ray_session(num_cpus=1) as ray:
        store = ray.remote(num_cpus=1)(Store).remote()
        for i in range(count + 20):
            if i == 20:
                started = time.perf_counter()
            ray.get(store.store.remote(batch))
        ray_us = (time.perf_counter() - started) / count * 1e6
    return zmq_us, ray_us


# ---------------------------------------------------------------- sweep overhead


def pool_run(config: str, seed: int, out: str) -> float:
    """One run as the benchmark scripts' pools do it: validate, then ``train`` in this worker."""
    import torch

    from hilrl.config import load_config
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    train(load_config(config, {"train.seed": seed}), out, show_progress=False)
    return seed


def sweep_walls(workdir: Path, steps: int, seeds: list[int]) -> dict[str, float]:
    config = workdir / "sweep.yaml"
    raw = experiment(steps, 100, "local")
    raw["train"]["checkpoint_every"] = steps
    config.write_text(yaml.safe_dump(raw))
    walls = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(pool_run, [str(config)] * len(seeds), seeds,
                      [str(workdir / "pool" / f"seed_{s}") for s in seeds]))
    walls["plain process pool (2 workers)"] = time.perf_counter() - started
    def sweep(name: str, *options: str) -> None:
        command = [sys.executable, "-m", "hilrl.cli", "sweep", str(config), "--seeds", *map(str, seeds), "--out",
                   str(workdir / f"sweep_{len(walls)}"), "--workers", "2", *options]
        started = time.perf_counter()
        result = subprocess.run(command, env=ENV, capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"{name} failed\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        walls[name] = time.perf_counter() - started

    sweep("hilrl sweep --backend local (2 workers)", "--backend", "local")
    sweep("hilrl sweep --backend ray (2 workers)", "--backend", "ray")  # starts and stops a local Ray
    with running_cluster(cpus=2) as address:  # the README's way: `ray start --head` once, then many sweeps
        sweep("hilrl sweep --backend ray --address", "--backend", "ray", "--address", address)
    return walls


@contextmanager
def running_cluster(cpus: int) -> Iterator[str]:
    """`ray start --head --block` on loopback (a free port, its own temp folder), stopped after the block."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="so-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    head = subprocess.Popen(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", str(cpus), "--include-dashboard", "false", "--temp-dir", temp, "--block"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            executable=str(Path(sys.executable).parent / "ray"))
    deadline = time.monotonic() + 90
    while not list(Path(temp).glob("session_latest/logs/raylet.out")):
        if head.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("ray start --head did not come up")
        time.sleep(0.5)
    time.sleep(2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops what it started
        head.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, no 4-actor row")
    parser.add_argument("--steps", type=int, default=None, help="env steps of each collection run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per collection row (their median is shown)")
    parser.add_argument("--parts", nargs="+", default=["runs", "transport", "sweep"],
                        choices=["runs", "transport", "sweep"], help="which tables")
    args = parser.parse_args()
    steps = args.steps or (2400 if args.quick else 8000)
    actors = [1, 2] if args.quick else [1, 2, 4]
    workdir = Path(tempfile.mkdtemp(prefix="scale_out_"))
    load = os.getloadavg()
    print(f"machine: {describe_machine()}; load average before: {load[0]:.1f}")
    print(f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], 'benchmarks/scale_out.py', *sys.argv[1:]])}")
    print(f"work folder: {workdir}\n")

    update_steps = 600 if args.quick else 1000
    print(f"collection ({steps} env steps each, no updates: learning_starts = steps; median of {args.repeats} runs) "
          f"and updates "
          f"({update_steps} env steps, updates after 100, max_update_ratio null)")
    print(f"{'runtime':<16} {'env steps/s':>12} {'(range)':>12} {'vs 1 Ray actor':>15} {'updates/s':>10} "
          f"{'env steps/s':>12} {'wall s':>8}")
    collected: dict[str, float] = {}
    for name, runtime in rows(actors) if "runs" in args.parts else []:
        repeats = [train_row(experiment(steps, steps, runtime), workdir / f"collect_{len(collected)}_{i}")
                   for i in range(args.repeats)]
        rate, wall = float(np.median([r[0] for r in repeats])), sum(r[2] for r in repeats)
        spread = f"{min(r[0] for r in repeats):.0f}-{max(r[0] for r in repeats):.0f}"
        collected[name] = rate
        updates_runtime = runtime if runtime == "local" else {**runtime, "max_update_ratio": None}
        step_rate, update_rate, wall2 = train_row(experiment(update_steps, 100, updates_runtime),
                                                  workdir / f"update_{len(collected)}")
        base = collected.get("Ray, 1 actor")
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{name:<16} {rate:>12.0f} {spread:>12} {ratio:>15} {update_rate:>10.1f} {step_rate:>12.0f} "
              f"{wall + wall2:>8.0f}", flush=True)
    if collected:
        two = collected["Ray, 2 actors"] / collected["Ray, 1 actor"]
        print(f"goal: 2 Ray actors collect >= 1.6x one: {two:.2f}x -> {'met' if two >= 1.6 else 'missed'}")
        alone = [ceiling(n) for n in (1, 2)]
        print(f"this machine's ceiling, Reach stepped with random actions in 1 and 2 processes side by side (no "
              f"policy, no transport): {alone[0]:.0f} and {alone[1]:.0f} env steps/s = {alone[1] / alone[0]:.2f}x\n")

    if "transport" in args.parts:
        zmq_us, ray_us = transport_costs(300 if args.quick else 1000)
        print("one 64-step batch of Reach transitions, sent and acknowledged")
        print(f"  ZMQ on loopback (msgpack + raw numpy): {zmq_us:8.0f} us")
        print(f"  Ray actor call + ray.get:              {ray_us:8.0f} us   ({ray_us / zmq_us:.1f}x)\n")
    if "sweep" not in args.parts:
        return
    seeds = [0, 1, 2]
    walls = sweep_walls(workdir, 300 if args.quick else 500, seeds)
    base = walls["plain process pool (2 workers)"]
    print(f"sweep of {len(seeds)} seeds ({300 if args.quick else 500} env steps each, 2 at a time)")
    for name, wall in walls.items():
        print(f"  {name:<40} {wall:7.1f} s   {wall / base:.2f}x   {(wall - base) / len(seeds):+6.1f} s per run")
    ray_ratio = walls["hilrl sweep --backend ray (2 workers)"] / base
    print(f"goal: a 3-seed sweep on Ray <= 1.1x the local pool's wall: {ray_ratio:.2f}x -> "
          f"{'met' if ray_ratio <= 1.1 else 'missed'} (a Ray started by the sweep); on a cluster started before: "
          f"{walls['hilrl sweep --backend ray --address'] / base:.2f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
