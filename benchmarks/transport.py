"""Cost of the robot protocol on loopback, against plain pyzmq moving the same bytes.

1. Command round trip. Our side: ``RobotClient.call("step", ...)`` to a real
   ``python -m hardware.server`` (kinematic driver, so no physics is timed):
   encode, send, server decode + schema + limit checks + driver + encode of a
   reply carrying the state, client decode. Baseline: a plain REQ/REP pair in
   the same kind of process pair, where the client sends the very request
   bytes and the server answers with the very reply bytes our server produced
   (captured once), with no encoding or checks. Floor (informational): a Python
   process with the robot server's socket loop (ROUTER, poll, recv_multipart,
   send_multipart) answering the same captured reply to a DEALER, i.e. what any
   Python server costs before it decodes or checks anything. Blocks of the three
   alternate so that drift on a shared machine hits all alike; p50/p99 over all samples.
2. Transition throughput. Our side: one transition per message (a 128x128x3
   uint8 image, a float32 state vector of ``--state-dim``, action, reward and
   the two done flags) through ``protocol.encode`` and ``send_multipart(copy=False)``
   on PUSH; the PULL side receives with ``copy=False`` and ``protocol.decode``s
   every message (arrays are views of the frames). Baseline: raw PUSH/PULL of one
   frame of the same total size, prepared once. Messages/s at the receiver,
   median of ``--repeats`` alternating runs.
3. Actor -> learner. Our side: the real ``hilrl.runtime.distributed.actor.Actor`` link (batch transitions of
   Reach with a 128x128x3 ``front`` camera + state, encode each batch, append it to the spool in one
   ``writev``, send on DEALER, handle acks) in one process, the real ``hilrl.runtime.distributed.learner.Learner``
   serve loop (ROUTER receive, decode, vectorised schema/shape/finite checks, append the batch to
   the log in one ``writev``, store in the replay buffer, ack) in another; no env
   steps and no SGD are timed; the actor replays one real episode's observations, chained as a live actor chains them.
   Baseline: raw PUSH/PULL of one frame per step as big as one step's message with one observation
   (128x128x3 image + state) and the small fields, prepared once: the unit the issue names. (Ours
   sends a step's ``next_obs`` only at episode ends and batch ends, wire v3.) Transitions/s stored at
   the learner, median of ``--repeats`` alternating runs, in three phases of ``--actor-messages`` steps:
   the first steps (spool and log grow new files); after a learner checkpoint (both files recycled)
   while the replay ring still fills memory it never used, as in any run shorter than
   ``train.buffer_capacity`` (the learner's ``PageAhead`` thread faults that memory in just ahead of
   the ring's head, ``hilrl/data/paging.py``); and after the ring wrapped, as in a run past its capacity.

Run: ``python benchmarks/transport.py [--round-trips 5000] [--messages 20000] [--actor-messages 2000]
[--repeats 3] [--sections robot,actor]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # `hardware` is a top-level folder of the repository

from hardware.testing import running_server  # noqa: E402
from hilrl.envs.protocol import decode, encode  # noqa: E402
from hilrl.envs.remote import RobotClient  # noqa: E402
from machine import cpu_name  # noqa: E402

IMAGE_SHAPE = (128, 128, 3)


# ------------------------------------------------------------------ child processes


def serve_raw_rep(address_file: str, reply_file: str) -> None:
    """REP socket that answers every request with the same pre-recorded bytes."""
    reply_bytes = Path(reply_file).read_bytes()
    sock = zmq.Context.instance().socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    Path(address_file + ".tmp").write_text(f"tcp://127.0.0.1:{port}")
    os.rename(address_file + ".tmp", address_file)  # the parent never reads a half-written address
    while True:
        if sock.recv() == b"quit":
            sock.send(b"")
            return
        sock.send(reply_bytes)


def serve_python_echo(address_file: str, reply_file: str) -> None:
    """ROUTER socket in the robot server's loop shape (poll, recv_multipart, send_multipart) answering the
    pre-recorded reply: what a Python server costs before it decodes or checks anything (the floor row)."""
    reply_bytes = Path(reply_file).read_bytes()
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    Path(address_file + ".tmp").write_text(f"tcp://127.0.0.1:{port}")
    os.rename(address_file + ".tmp", address_file)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        if not poller.poll(100):
            continue
        identity, empty, request_bytes = sock.recv_multipart()
        sock.send_multipart([identity, empty, b"" if request_bytes == b"quit" else reply_bytes], copy=False)
        if request_bytes == b"quit":
            return


def push_messages(address: str, count: int, state_dim: int) -> None:
    """PUSH ``count`` transitions encoded with our protocol."""
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.sndhwm = 1000
    sock.connect(address)
    image = np.random.default_rng(0).integers(0, 256, size=IMAGE_SHAPE, dtype=np.uint8)
    state = np.random.default_rng(1).normal(size=state_dim).astype(np.float32)
    action = np.zeros(4, np.float32)
    for step in range(count):
        message = {"step": step, "obs": {"front": image, "state": state}, "action": action,
                   "reward": 0.0, "terminated": False, "truncated": False}
        sock.send_multipart(encode(message), copy=False)
    sock.close(linger=-1)  # deliver everything before exiting


def push_raw(address: str, count: int, nbytes: int) -> None:
    """PUSH ``count`` prepared frames of ``nbytes`` each (the raw baseline of sections 2 and 3)."""
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.sndhwm = 1000
    sock.connect(address)
    payload = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    for _ in range(count):
        sock.send(payload, copy=False)
    sock.close(linger=-1)


def actor_learner_config() -> dict:
    return {"env": {"id": "hilrl/Reach-v0", "cameras": ["front"], "image_size": IMAGE_SHAPE[0]},
            "demos": {"episodes": 0}, "algo": {"name": "sac"},
            "train": {"learning_starts": 10**9, "video": False},
            "runtime": {"mode": "distributed", "max_unacked": 1000}}


def bench_episode(env) -> list[dict]:
    """One real episode's observations of the benchmark's env (rendered once, before anything is timed)."""
    episode = [env.reset(seed=0)[0]]
    action = np.zeros(env.action_space.shape, np.float32)
    while True:
        next_obs, _, terminated, truncated, _ = env.step(action)
        episode.append(next_obs)
        if terminated or truncated:
            return episode


def run_bench_actor(address: str, folder: str, count: int) -> None:
    """The real actor link streaming ``count`` steps replayed from one real episode (no env steps timed).

    Steps chain as in ``Actor.run`` (a step's ``next_obs`` is the next step's ``obs`` object), and the
    episode ends every ``len(episode) - 1`` steps, so the wire carries what a live actor's wire carries.
    """
    import torch

    from hilrl.config import validate_config
    from hilrl.runtime.distributed.actor import Actor

    torch.set_num_threads(1)
    actor = Actor(validate_config(actor_learner_config()), folder, address, actor_id="bench")
    episode = bench_episode(actor.env)
    length = len(episode) - 1
    action = np.zeros(actor.act_space.shape, np.float32)
    steps = [dict(obs=episode[i], action=action, reward=0.0, next_obs=episode[i + 1], terminated=False,
                  truncated=i == length - 1, intervened=False, intervention_start=False, policy_action=action,
                  is_success=False, episode_start=i == 0) for i in range(length)]
    try:
        while not actor.learner_done:
            if actor.next_seq <= count and actor.unacked_steps() < actor.config.runtime.max_unacked:
                actor._take(steps[(actor.next_seq - 1) % length])
            actor._service_link()
            if actor.next_seq > count:
                actor.socket.poll(10)
    finally:
        actor.close()


def actor_learner_message_bytes() -> int:
    """Bytes of one step as the raw baseline moves it: one observation (image + state) and the small fields."""
    from hilrl.config import validate_config
    from hilrl.envs.make import make_env
    from hilrl.runtime.distributed.transport import WIRE_VERSION

    env = make_env(validate_config(actor_learner_config()).env)
    obs, _ = env.reset(seed=0)
    env.close()
    action = np.zeros(env.action_space.shape, np.float32)
    frames = encode({"v": WIRE_VERSION, "kind": "transitions", "actor": "bench", "seq": 1, "t": dict(
        obs=obs, action=action, reward=0.0, terminated=False, truncated=False, intervened=False,
        intervention_start=False, policy_action=action, is_success=False, episode_start=False)})
    return sum(memoryview(f).nbytes for f in frames)


def raw_push_pull_rate(count: int, nbytes: int) -> float:
    """Messages/s of ``nbytes`` each arriving at a PULL socket from a PUSH process (the raw baseline)."""
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.rcvhwm = 1000
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sender = subprocess.Popen([sys.executable, __file__, "--push-raw", f"tcp://127.0.0.1:{port}", str(count),
                               str(nbytes)])
    try:
        sock.recv(copy=False)
        start = time.perf_counter()
        for _ in range(count - 1):
            sock.recv(copy=False)
        elapsed = time.perf_counter() - start
        sender.wait(60)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        sock.close(linger=0)
    return (count - 1) / elapsed


def actor_learner_rates(count: int) -> tuple[float, float, float]:
    """Transitions/s stored and logged by the real learner from the real actor link, in three phases of ``count``
    steps each: (1) the first steps, whose spool and log files are new; (2) after a learner checkpoint, once the
    actor's spool and the learner's log write into recycled files, while the ring still fills memory it never
    used (a run that has not yet stored ``buffer_capacity`` steps); (3) after the ring wrapped, so it writes into
    memory it has used before (a run past its capacity)."""
    import torch

    from hilrl.config import validate_config
    from hilrl.data.paging import WINDOW_BYTES
    from hilrl.runtime.distributed.actor import BATCH_MAX_TRANSITIONS, MAX_IN_FLIGHT_BATCHES
    from hilrl.runtime.distributed.learner import Learner

    torch.set_num_threads(1)
    raw = actor_learner_config()
    window = MAX_IN_FLIGHT_BATCHES * BATCH_MAX_TRANSITIONS  # what the actor has sent ahead while the learner checkpoints
    # Phase 2 starts past the rows the learner's PageAhead populates before any actor speaks, so its thread has to
    # keep ahead of the head while timed, as through a long run; phase 3 overwrites phase 1's slots.
    phase2_start = max(count + window, WINDOW_BYTES // int(np.prod(IMAGE_SHAPE)) + 1)
    capacity = phase2_start + count
    raw["train"].update(buffer_capacity=capacity, steps=capacity + count)
    with tempfile.TemporaryDirectory() as tmp:
        learner = Learner(validate_config(raw), Path(tmp, "learner"), bind="tcp://127.0.0.1:*", demo_episodes=[],
                          show_progress=False)
        sender = subprocess.Popen([sys.executable, __file__, "--bench-actor", learner.address, str(Path(tmp, "actor")),
                                   str(raw["train"]["steps"])])

        def rate_until(steps: int) -> float:
            start, first = time.perf_counter(), learner.counters["env_steps"]
            while learner.counters["env_steps"] < steps:
                learner._serve(100)
            return (learner.counters["env_steps"] - first) / (time.perf_counter() - start)

        try:
            while learner.counters["env_steps"] == 0:
                learner._serve(100)
            first_pass = rate_until(count)
            learner.checkpoint()  # drops the log into the recycling pool, as every checkpoint of a run does
            rate_until(phase2_start)  # untimed: what queued up meanwhile, and the rows paged in at start
            recycled = rate_until(capacity)
            wrapped = rate_until(capacity + count)
            deadline = time.perf_counter() + 30
            while sender.poll() is None and time.perf_counter() < deadline:
                learner._serve(50)  # tell the actor it is done
        finally:
            if sender.poll() is None:
                sender.kill()
            sender.wait()
            learner.close()
    return first_pass, recycled, wrapped


def transition_bytes(image: np.ndarray, state: np.ndarray) -> int:
    header, *frames = encode({"step": 0, "obs": {"front": image, "state": state}, "action": np.zeros(4, np.float32),
                              "reward": 0.0, "terminated": False, "truncated": False})
    return len(header) + sum(memoryview(f).nbytes for f in frames)


# ------------------------------------------------------------------ measurements


def round_trips(blocks: int, per_block: int) -> dict[str, np.ndarray]:
    samples: dict[str, list[float]] = {"ours": [], "raw": [], "echo": []}
    with tempfile.TemporaryDirectory() as tmp:
        # The shipped kinematic config, with a watchdog long enough for the pauses while the baseline runs.
        config = (REPO_ROOT / "hardware" / "configs" / "kinematic.yaml").read_text().replace("watchdog_timeout_s: 0.2", "watchdog_timeout_s: 10")
        Path(tmp, "robot.yaml").write_text(config)
        with running_server("--config", str(Path(tmp, "robot.yaml"))) as server:
            _measure_round_trips(server.command_address, tmp, blocks, per_block, samples)
    return {k: np.array(v) * 1e6 for k, v in samples.items()}


def _start_echo(kind: str, tmp: str) -> tuple[subprocess.Popen, str]:
    address_file = str(Path(tmp, f"addr_{kind}"))
    process = subprocess.Popen([sys.executable, __file__, f"--serve-{kind}", address_file, str(Path(tmp, "reply"))])
    while not Path(address_file).exists():
        time.sleep(0.01)
    return process, Path(address_file).read_text()


def _measure_round_trips(address: str, tmp: str, blocks: int, per_block: int, samples: dict[str, list[float]]) -> None:
    client = RobotClient(address, timeout_s=10)
    client.call("reset")
    deltas = ([0.001, 0.0, 0.0], [-0.001, 0.0, 0.0])
    # Capture the exact bytes of one step request and its reply for the baseline and the floor.
    request_frames = [b"", *encode({"v": 1, "op": "step", "id": 1, "delta": np.array(deltas[0]), "gripper": 1.0})]
    client.socket.send_multipart(request_frames)
    reply_frames = client.socket.recv_multipart()
    assert len(reply_frames) == 2, "a kinematic step reply fits in one frame"
    Path(tmp, "reply").write_bytes(reply_frames[1])
    processes = []
    try:
        raw_server, raw_address = _start_echo("raw-rep", tmp)
        processes.append(raw_server)
        echo_server, echo_address = _start_echo("python-echo", tmp)
        processes.append(echo_server)
        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.connect(raw_address)
        echo = zmq.Context.instance().socket(zmq.DEALER)
        echo.connect(echo_address)
        request_bytes = request_frames[1]

        def raw_call() -> None:
            raw.send(request_bytes)
            raw.recv()

        def echo_call() -> None:
            echo.send_multipart(request_frames)
            echo.recv_multipart()

        def ours_call(i: int) -> None:
            client.call("step", delta=deltas[i % 2], gripper=1.0)

        calls = {"ours": ours_call, "raw": lambda i: raw_call(), "echo": lambda i: echo_call()}
        for i in range(200):  # warm every path
            for call in calls.values():
                call(i)
        for _ in range(blocks):
            for name, call in calls.items():
                for i in range(per_block):
                    start = time.perf_counter()
                    call(i)
                    samples[name].append(time.perf_counter() - start)
        raw.send(b"quit")
        raw.recv()
        echo.send_multipart([b"", b"quit"])
        echo.recv_multipart()
        for sock in (raw, echo):
            sock.close()
        for process in processes:
            process.wait(10)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        client.close()


def protocol_push_pull_rate(count: int, state_dim: int) -> float:
    """Transitions/s arriving at a PULL socket and ``protocol.decode``d, from a process that encodes and PUSHes them."""
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.rcvhwm = 1000
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sender = subprocess.Popen([sys.executable, __file__, "--push", f"tcp://127.0.0.1:{port}", str(count), str(state_dim)])
    try:
        checksum = 0
        first = sock.recv_multipart(copy=False)
        start = time.perf_counter()
        for _ in range(count - 1):
            message = decode(sock.recv_multipart(copy=False))
            checksum += int(message["obs"]["front"][0, 0, 0]) + message["obs"]["state"].shape[0]
        elapsed = time.perf_counter() - start
        sender.wait(30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
        sock.close(linger=0)
    del first, checksum
    return (count - 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round-trips", type=int, default=5000, help="step round trips per side")
    parser.add_argument("--messages", type=int, default=20000, help="transitions per throughput run")
    parser.add_argument("--actor-messages", type=int, default=2000, help="transitions per actor -> learner run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating throughput runs per side")
    parser.add_argument("--state-dim", type=int, default=25)
    parser.add_argument("--sections", default="robot,actor", help="robot (1 and 2), actor (3), or both")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= {"robot", "actor"}:
        parser.error(f"--sections {args.sections!r}: use robot, actor or robot,actor")

    blocks = 10
    rows = []
    notes = []
    if "robot" in sections:
        latency = round_trips(blocks, max(1, args.round_trips // blocks))
        size = transition_bytes(np.zeros(IMAGE_SHAPE, np.uint8), np.zeros(args.state_dim, np.float32))
        rates: dict[str, list[float]] = {"ours": [], "raw": []}
        for _ in range(args.repeats):
            rates["ours"].append(protocol_push_pull_rate(args.messages, args.state_dim))
            rates["raw"].append(raw_push_pull_rate(args.messages, size))  # as many bytes as our encoding sends
        ours_rate, raw_rate = float(np.median(rates["ours"])), float(np.median(rates["raw"]))
        for label, q in (("step round trip p50 (us)", 50), ("step round trip p99 (us)", 99)):
            ours, raw = np.percentile(latency["ours"], q), np.percentile(latency["raw"], q)
            goal = "<= 1.5" if q == 99 else ""
            rows.append((label, f"{ours:.0f}", f"{raw:.0f}", f"{ours / raw:.2f}", goal))
        for q in (50, 99):
            echo, raw = np.percentile(latency["echo"], q), np.percentile(latency["raw"], q)
            rows.append((f"  floor: Python ROUTER echo, no decode/checks, p{q} (us)", f"{echo:.0f}", f"{raw:.0f}",
                         f"{echo / raw:.2f}", ""))
        rows.append((f"transitions/s ({size} B each)", f"{ours_rate:,.0f}", f"{raw_rate:,.0f}",
                     f"{ours_rate / raw_rate:.2f}", ">= 0.7"))
        notes.append(f"{latency['ours'].size} round trips per side in {blocks} alternating blocks (ours, raw, floor); "
                     f"throughput median of {args.repeats} runs x {args.messages} messages per side")
    if "actor" in sections:
        nbytes = actor_learner_message_bytes()
        actor_rates: dict[str, list] = {"ours": [], "raw": []}
        for _ in range(args.repeats):
            for mode in ("ours", "raw"):
                actor_rates[mode].append(actor_learner_rates(args.actor_messages) if mode == "ours"
                                         else raw_push_pull_rate(args.actor_messages, nbytes))
        raw_rate = float(np.median(actor_rates["raw"]))
        phases = ("first pass: new spool + log files", "recycled files, ring filling", "recycled files, ring wrapped")
        for column, label in enumerate(phases):
            ours_rate = float(np.median([r[column] for r in actor_rates["ours"]]))
            rows.append((f"actor->learner transitions/s, {label} (raw: {nbytes} B each)", f"{ours_rate:,.0f}",
                         f"{raw_rate:,.0f}", f"{ours_rate / raw_rate:.2f}", ">= 0.7"))
        notes.append(f"actor -> learner median of {args.repeats} runs x {args.actor_messages} transitions per side "
                     "and phase (ours: spooled, sent, checked, logged, stored in the replay buffer, acked; "
                     "'recycled files' = after a learner checkpoint recycled the log; 'ring filling' = the replay "
                     "ring writes memory it never touched, as in a run shorter than train.buffer_capacity)")

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}")
    for note in notes:
        print(f"samples: {note}")
    header = ("measure", "ours", "raw pyzmq", "ours/raw", "goal")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-raw-rep":
        serve_raw_rep(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-python-echo":
        serve_python_echo(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--push-raw":
        push_raw(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--bench-actor":
        run_bench_actor(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--push":
        push_messages(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
