"""Learning from pixels on a CPU: where to cut the pretrained encoder, and what an update costs per observation kind.

``cut``: the frozen EfficientNet-Lite0 (:mod:`hilrl.policies.pretrained`) cut after stages 3 to 7: milliseconds to
encode one frame (median of ``--calls``, after warm-up), the feature map's shape and its fp16 size per frame. The
choice (``CUT_STAGE``) and these figures are written in ``hilrl/policies/pretrained.py``.

``speed``: SAC updates per second at the same batch (``--batch``, 256: HIL-SERL's), utd 1, 2 critics, hidden
256x256, sampling from a filled replay buffer as in training (``SAC.train_step``), for three observation kinds of
a two-camera task (front + wrist at ``--size`` pixels, 128 as gym-hil and HIL-SERL) with 18 proprioceptive values
(gym-hil's ``agent_pos``):

* ``state``: proprioception and a 10-d object state (no cameras): the reference the issue's goal is set against
  (cached features at >= 0.7 of its updates/s);
* ``cached``: proprioception and each camera's cached fp16 feature map (``algo.images.encoder: efficientnet_lite0``:
  the frozen backbone ran once per frame when it was observed; updates read the map and train the spatial
  embedding heads);
* ``drq``: proprioception and raw uint8 frames through DrQ's CNN, trained from scratch (``encoder: drq``).

Each row also gives the bytes the replay buffers hold per 100k transitions as the local training loop stores
them (each step writes its ``obs`` and its ``next_obs`` row) and in the shared form the distributed learner
stores (``next_obs`` read from the next slot; :mod:`hilrl.data.buffers`) and, for ``cached``, the backbone's time per env step
(both frames encoded in one call). Rows take turns within each repeat (best of ``--repeats``), so on a shared
machine all see the same conditions.

Run: ``python benchmarks/pixels.py cut`` and ``python benchmarks/pixels.py speed [--threads 1]``.

Measured (``python benchmarks/pixels.py speed --repeats 3``; Intel Xeon @ 2.80GHz, 2 cores shared with other
jobs, load average about 1, one torch thread, torch 2.13): state 63.8 updates/s, cached 25.7 (0.40 of state;
the update before the C++ shift pass, the pooling order and the shared online/target pass of s': 22.3, 0.36,
measured right after), DrQ 0.08. The goal (cached >= 0.7 of state) is missed. Where the cached update's time goes
now (torch.profiler): the spatial embedding's products (forward over s' for both encoders, over s, and the
kernel's gradient) about a fifth, the fp16 maps' shift and conversion about 0.6 ms per map and camera, the rest
the networks a state update runs too, on 118 inputs instead of 28.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import gymnasium as gym
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import describe_machine  # noqa: E402

PROPRIO = 18
OBJECT = 10
ACTIONS = 4
CAMERAS = ("front", "wrist")


def header(threads: int) -> None:
    import torch

    print(f"machine: {describe_machine(f'torch {torch.__version__}', f'{threads} torch thread(s)')} | "
          f"{platform.platform()}")
    print(f"command: {shlex.join([os.path.basename(sys.executable), *sys.argv])}")


def measure_cut(args: argparse.Namespace) -> None:
    import torch

    from hilrl.policies.pretrained import CUT_STAGE, STAGES, EfficientNetLite0, load_weights

    state = load_weights()
    frame = torch.randint(0, 256, (1, args.size, args.size, 3), dtype=torch.uint8)
    networks = {stages: EfficientNetLite0(stages).load_pretrained(state).eval() for stages in range(3, len(STAGES) + 1)}
    times: dict[int, list[float]] = {stages: [] for stages in networks}
    with torch.no_grad():
        for net in networks.values():
            for _ in range(5):
                net(frame)
        for _ in range(args.calls):  # in turns, so a busy moment of the machine hits every cut alike
            for stages, net in networks.items():
                start = time.perf_counter()
                out = net(frame)
                times[stages].append(time.perf_counter() - start)
    header(args.threads)
    print(f"EfficientNet-Lite0 cut after stage N, one {args.size}x{args.size} frame, median of {args.calls} calls")
    print(f"{'cut after stage':>16} {'blocks':>7} {'feature map':>14} {'fp16 KiB/frame':>15} {'ms/frame':>9}")
    for stages, net in networks.items():
        with torch.no_grad():
            shape = tuple(net(frame).shape[1:])
        mark = "  <- CUT_STAGE" if stages == CUT_STAGE else ""
        print(f"{stages:>16} {len(net._blocks):>7} {' x '.join(map(str, shape)):>14} "
              f"{np.prod(shape) * 2 / 1024:>15.1f} {np.median(times[stages]) * 1e3:>9.2f}{mark}")
    print(f"(the uint8 frame itself: {args.size * args.size * 3 / 1024:.1f} KiB)")


def spaces_of(kind: str, size: int, feature_shape: tuple[int, ...]) -> gym.spaces.Dict:
    proprio = {"agent_pos": gym.spaces.Box(-np.inf, np.inf, (PROPRIO,), np.float32)}
    if kind == "state":
        return gym.spaces.Dict({**proprio, "object": gym.spaces.Box(-np.inf, np.inf, (OBJECT,), np.float32)})
    if kind == "cached":
        return gym.spaces.Dict({**proprio, **{c: gym.spaces.Box(-np.inf, np.inf, feature_shape, np.float16)
                                              for c in CAMERAS}})
    return gym.spaces.Dict({**proprio, **{c: gym.spaces.Box(0, 255, (size, size, 3), np.uint8) for c in CAMERAS}})


def random_obs(space: gym.spaces.Dict, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, box in space.spaces.items():
        if box.dtype == np.uint8:
            out[key] = rng.integers(0, 256, (n, *box.shape), dtype=np.uint8)
        else:
            out[key] = rng.standard_normal((n, *box.shape)).astype(box.dtype)
    return out


def bytes_per_transition(buffer, next_rows: bool = True) -> int:
    """What a buffer holds per step: every obs row, every next_obs row (the local loop writes one per step;
    ``next_rows=False``: the shared form the distributed learner stores, next_obs read from the next slot but at
    episode ends, not counted), actions, rewards, flags, extras."""
    rows = [*buffer.obs.values(), *(buffer.next_obs.values() if next_rows else ()), buffer.actions, buffer.rewards,
            buffer.terminated, buffer.truncated, buffer.next_in_obs, *buffer.extras.values()]
    return sum(a.itemsize * int(np.prod(a.shape[1:])) for a in rows)


def measure_speed(args: argparse.Namespace) -> None:
    import torch

    from hilrl.data.buffers import STEP_EXTRAS, ReplayBuffer
    from hilrl.policies.pretrained import FrozenImageEncoder
    from hilrl.policies.sac.agent import SAC
    from hilrl.policies.sac.config import SACConfig

    rng = np.random.default_rng(0)
    action_space = gym.spaces.Box(-1.0, 1.0, (ACTIONS,), np.float32)
    frame_encoder = FrozenImageEncoder("cpu")
    raw = spaces_of("drq", args.size, ())
    feature_shape = frame_encoder.feature_shape(raw["front"].shape)
    frames = torch.randint(0, 256, (len(CAMERAS), args.size, args.size, 3), dtype=torch.uint8)
    encode_times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        frame_encoder(frames)
        encode_times.append(time.perf_counter() - start)

    learners, buffers, memory = {}, {}, {}
    for kind in ("state", "cached", "drq"):
        buffer_space = spaces_of(kind, args.size, feature_shape)
        # the learner is built on what the env gives (raw frames for both image rows), as the training loop does
        learner_space = raw if kind != "state" else buffer_space
        config = SACConfig(batch_size=args.batch, utd=1, num_critics=2, hidden=(256, 256), device="cpu",
                           images={"encoder": "efficientnet_lite0" if kind == "cached" else "drq"})
        learners[kind] = SAC(learner_space, action_space, config, seed=0)
        buffer = ReplayBuffer(buffer_space, action_space, args.transitions, extras=STEP_EXTRAS)
        for start in range(0, args.transitions, 500):
            n = min(500, args.transitions - start)
            buffer.extend(random_obs(buffer_space, n, rng), rng.uniform(-1, 1, (n, ACTIONS)), rng.standard_normal(n),
                          random_obs(buffer_space, n, rng), np.zeros(n, bool), np.zeros(n, bool),
                          intervened=np.zeros(n, bool), next_intervened=np.zeros(n, bool),
                          episode=np.zeros(n, np.int64), step=np.zeros(n, np.int32))
        buffers[kind] = buffer
        memory[kind] = tuple(bytes_per_transition(buffer, shared) * 100_000 / 2**20 for shared in (True, False))

    rates: dict[str, float] = dict.fromkeys(learners, 0.0)
    for _ in range(args.repeats):
        for kind, learner in learners.items():
            for _ in range(2):  # warm-up
                learner.train_step(buffers[kind])
            count, start = 0, time.perf_counter()
            while count < 3 or (time.perf_counter() - start < args.seconds and count < args.max_updates):
                learner.train_step(buffers[kind])
                count += 1
            rates[kind] = max(rates[kind], count / (time.perf_counter() - start))

    header(args.threads)
    print(f"SAC updates/s, batch {args.batch}, utd 1, 2 critics, hidden 256x256, {len(CAMERAS)} cameras at "
          f"{args.size}x{args.size} + {PROPRIO} proprio; best of {args.repeats}; buffers of {args.transitions} rows")
    print(f"{'observations':<44} {'updates/s':>10} {'vs state':>9} {'MiB/100k local loop':>20} "
          f"{'MiB/100k shared next':>21}")
    names = {"state": f"state ({PROPRIO} proprio + {OBJECT} object)",
             "cached": f"cached fp16 features {'x'.join(map(str, feature_shape))} + proprio",
             "drq": "DrQ CNN on uint8 frames + proprio"}
    for kind in learners:
        print(f"{names[kind]:<44} {rates[kind]:>10.2f} {rates[kind] / rates['state']:>9.3f} {memory[kind][0]:>20.0f} "
              f"{memory[kind][1]:>21.0f}")
    print(f"encoding one env step for the cached row (both frames, one backbone call): "
          f"{np.median(encode_times) * 1e3:.1f} ms (median of {args.calls})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cut", "speed"))
    parser.add_argument("--size", type=int, default=128, help="camera image side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--calls", type=int, default=50, help="encoder calls timed")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--transitions", type=int, default=4000, help="rows in each filled buffer")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per row and repeat")
    parser.add_argument("--max-updates", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    measure_cut(args) if args.what == "cut" else measure_speed(args)


if __name__ == "__main__":
    main()
