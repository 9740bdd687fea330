"""Gradient updates per second of hilrl's SAC (2 and 10 critics) against stable-baselines3's SAC.

Same network sizes (hidden 256x256), batch 256, state observations of ``--obs-dim`` (25)
and ``--act-dim`` (4) actions, filled replay buffers, one run. Both sides include
sampling from their replay buffer, as in training. SB3 is timed through
``model.train(gradient_steps=K, batch_size=256)`` (one critic update per actor update,
i.e. utd 1); ours through ``SAC.train_step`` at utd 1 and at ``--utd``.

FLOP bound. The machine's matmul rate is measured on the very GEMMs one update
runs: for every linear layer shape ``(in, out)`` of the actor and critic,
``X (B x in) @ W`` (forward), ``G @ W^T`` (input gradient) and ``X^T @ G``
(weight gradient), B = 256. One update's FLOPs count only matmuls, 2 per
multiply-add (LayerNorm, activations, the optimiser and sampling are overhead, not counted):

* ``Fa`` = one actor forward on B rows, ``Fq`` = one critic member forward on B rows,
  ``Fa1``/``Fq1`` their first layers (whose input gradient is never needed).
* per critic step (utd of them): next actions ``Fa`` + 2 target members ``2 Fq``
  + N members forward and backward ``N (3 Fq - Fq1)``;
* actor step: actor forward and backward ``3 Fa - Fa1`` + N members forward and
  input-gradient backward ``2 N Fq``.

``bound updates/s = matmul rate / FLOPs per update``; a learner's fraction of the
bound is its measured rate divided by that. SB3's fraction uses the same count as
ours with 2 critics at utd 1 (the work the algorithm needs; SB3 does a little more).

The matmul probe and every learner are timed in turn within each repeat (best of
``--repeats`` each), so on a shared machine all rows see the same conditions.

Run: ``python benchmarks/learner_throughput.py [--device cuda] [--threads 1] [--compile] [--cuda-graph]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from hilrl.data.buffers import ReplayBuffer
from machine import cpu_name  # noqa: E402
from hilrl.policies.sac import SAC, SACConfig


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_best_rates(steps: dict[str, Callable[[], None]], iterations: dict[str, int], repeats: int,
                           device: torch.device) -> dict[str, float]:
    """Best-of-``repeats`` calls per second of each step, the contenders timed in turn within every repeat.

    Best-of filters out other tenants of a shared machine; taking turns puts the matmul-rate probe and
    every learner under the same conditions, so their ratios (the fractions of the bound) stay comparable
    even when the load changes during the run.
    """
    best = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            for _ in range(iterations[name]):
                step()
            synchronize(device)
            best[name] = max(best[name], iterations[name] / (time.perf_counter() - start))
    return best


def layer_shapes(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> list[tuple[int, int]]:
    dims = [in_dim, *hidden, out_dim]
    return list(zip(dims[:-1], dims[1:]))


def forward_flops(shapes: list[tuple[int, int]], rows: int) -> float:
    return float(sum(2 * rows * i * o for i, o in shapes))


def update_flops(obs_dim: int, act_dim: int, hidden: tuple[int, ...], batch: int, critics: int, utd: int,
                 min_critics: int = 2) -> float:
    """Matmul FLOPs of one RLPD update (see the module docstring for the counting)."""
    actor = layer_shapes(obs_dim, hidden, 2 * act_dim)
    critic = layer_shapes(obs_dim + act_dim, hidden, 1)
    fa, fq = forward_flops(actor, batch), forward_flops(critic, batch)
    fa1, fq1 = forward_flops(actor[:1], batch), forward_flops(critic[:1], batch)
    per_critic_step = fa + min_critics * fq + critics * (3 * fq - fq1)
    actor_step = (3 * fa - fa1) + 2 * critics * fq
    return utd * per_critic_step + actor_step


def matmul_probe(obs_dim: int, act_dim: int, hidden: tuple[int, ...], batch: int,
                 device: torch.device) -> tuple[Callable[[], None], float]:
    """A step running forward + both backward GEMMs over every layer shape of actor and critic, and its FLOPs."""
    shapes = layer_shapes(obs_dim, hidden, 2 * act_dim) + layer_shapes(obs_dim + act_dim, hidden, 1)
    tensors = [(torch.randn(batch, i, device=device), torch.randn(i, o, device=device),
                torch.randn(batch, o, device=device)) for i, o in shapes]
    flops = float(sum(3 * 2 * batch * i * o for i, o in shapes))

    def step() -> None:
        for x, w, g in tensors:
            torch.mm(x, w)
            torch.mm(g, w.t())
            torch.mm(x.t(), g)

    return step, flops


def random_transitions(n: int, obs_dim: int, act_dim: int, rng: np.random.Generator):
    obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    next_obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
    rewards = rng.standard_normal(n).astype(np.float32)
    terminated = rng.random(n) < 0.01
    return obs, next_obs, actions, rewards, terminated


class _SpacesOnlyEnv(gym.Env):
    """SB3 needs an env to build a model; train() never steps it."""

    def __init__(self, obs_dim: int, act_dim: int):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (act_dim,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


def sb3_step(args: argparse.Namespace, device: torch.device, data) -> Callable[[], None]:
    """SB3's ``train(gradient_steps=--iterations)`` on a filled buffer (one call, as SB3 trains), after warm-up."""
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.logger import configure

    obs, next_obs, actions, rewards, terminated = data
    n = len(obs)
    model = SB3SAC("MlpPolicy", _SpacesOnlyEnv(args.obs_dim, args.act_dim), buffer_size=n, batch_size=args.batch,
                   learning_starts=0, policy_kwargs=dict(net_arch=list(args.hidden)), device=device, seed=0)
    model.set_logger(configure(folder=None, format_strings=[]))
    buffer = model.replay_buffer
    buffer.observations[:, 0] = obs
    buffer.next_observations[:, 0] = next_obs
    buffer.actions[:, 0] = actions
    buffer.rewards[:, 0] = rewards
    buffer.dones[:, 0] = terminated
    buffer.full, buffer.pos = True, 0
    model.train(gradient_steps=args.warmup, batch_size=args.batch)
    return lambda: model.train(gradient_steps=args.iterations, batch_size=args.batch)


def ours_step(args: argparse.Namespace, device: torch.device, data, critics: int, utd: int,
              cuda_graph: bool, compile_critic: bool) -> Callable[[], None]:
    """One ``SAC.train_step`` on a filled buffer, after ``--warmup`` updates (which include any compilation)."""
    obs, next_obs, actions, rewards, terminated = data
    n = len(obs)
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (args.act_dim,), np.float32)
    config = SACConfig(num_critics=critics, utd=utd, hidden=tuple(args.hidden), batch_size=args.batch,
                       compile_critic=compile_critic)
    learner = SAC(obs_space, act_space, config, device=device, seed=0, cuda_graph=cuda_graph)
    online = ReplayBuffer(obs_space, act_space, n)
    online.extend({"state": obs}, actions, rewards, {"state": next_obs}, terminated, np.zeros(n, bool))
    for _ in range(args.warmup):
        learner.train_step(online)
    return lambda: learner.train_step(online)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--obs-dim", type=int, default=25)
    parser.add_argument("--act-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--utd", type=int, default=5, help="the utd>1 rows use this")
    parser.add_argument("--iterations", type=int, default=30, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--buffer", type=int, default=20_000, help="transitions in each replay buffer")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time our update captured as a CUDA graph (rows added to the eager ones)")
    parser.add_argument("--compile", action="store_true",
                        help="also time our learner with SACConfig.compile_critic (rows added; warm-up compiles)")
    parser.add_argument("--skip-sb3", action="store_true")
    args = parser.parse_args()
    args.hidden = tuple(args.hidden)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda given but torch.cuda.is_available() is False")
    if args.cuda_graph and device.type != "cuda":
        sys.exit("--cuda-graph needs --device cuda")
    data = random_transitions(args.buffer, args.obs_dim, args.act_dim, np.random.default_rng(0))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def flops(critics: int, utd: int) -> float:
        return update_flops(args.obs_dim, args.act_dim, args.hidden, args.batch, critics, utd)

    probe, probe_flops = matmul_probe(args.obs_dim, args.act_dim, args.hidden, args.batch, device)
    steps: dict[str, Callable[[], None]] = {"matmul": probe}
    iterations = {"matmul": args.iterations * 4}
    rows = []  # (key, name, critics, utd, flops per update)
    if not args.skip_sb3:
        steps["sb3"] = sb3_step(args, device, data)
        iterations["sb3"] = 1  # one call runs --iterations updates
        rows.append(("sb3", "stable-baselines3 SAC", 2, 1, flops(2, 1)))
    variants = [("", False, False)]
    if args.compile:
        variants.append((" (compiled critic)", False, True))
    if args.cuda_graph:
        variants.append((" (CUDA graph)", True, False))
    for suffix, cuda_graph, compile_critic in variants:
        for critics in (2, 10):
            for utd in sorted({1, args.utd}):
                key = f"ours{suffix}/{critics}/{utd}"
                steps[key] = ours_step(args, device, data, critics, utd, cuda_graph, compile_critic)
                rows.append((key, f"hilrl SAC{suffix}", critics, utd, flops(critics, utd)))
    for key in steps:
        iterations.setdefault(key, args.iterations)
    rates = interleaved_best_rates(steps, iterations, args.repeats, device)
    rate = probe_flops * rates["matmul"]
    if "sb3" in rates:
        rates["sb3"] *= args.iterations
    sb3 = rates.get("sb3")
    ours10_utd1 = max((rates[key] for key, _, critics, utd, _ in rows if key != "sb3" and critics == 10 and utd == 1),
                      default=0.0)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"machine: {device_name} | {platform.platform()} | python {platform.python_version()}")
    print(f"torch {torch.__version__} | device {device} | threads {torch.get_num_threads()} "
          f"| load average at start {load:.2f} (other tenants make rates noisy)")
    print(f"command: {shlex.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"batch {args.batch}, hidden {args.hidden}, obs dim {args.obs_dim}, action dim {args.act_dim}; "
          f"best of {args.repeats} x {args.iterations} updates, every row and the matmul probe timed in turn")
    print(f"matmul rate at these shapes (fwd + 2 bwd GEMMs): {rate / 1e9:.1f} GFLOP/s")
    header = (f"{'learner':<28}{'critics':>8}{'utd':>5}{'actor upd/s':>13}{'critic upd/s':>14}"
              f"{'MFLOP/upd':>11}{'bound upd/s':>13}{'of bound':>10}{'vs SB3':>8}")
    print(header)
    print("-" * len(header))
    for key, name, critics, utd, f in rows:
        ups = rates[key]
        bound = rate / f
        versus = f"{ups / sb3:.2f}x" if sb3 and utd == 1 else "-"
        print(f"{name:<28}{critics:>8}{utd:>5}{ups:>13.1f}{ups * utd:>14.1f}{f / 1e6:>11.0f}{bound:>13.1f}"
              f"{ups / bound:>10.2f}{versus:>8}")
    if device.type == "cuda":
        print("note: on a GPU these small GEMMs are launch-bound, so the measured 'matmul rate' is far below peak "
              "and 'of bound' can exceed 1; compare updates/s with SB3 instead.")
    if sb3 and ours10_utd1:
        print(f"best hilrl SAC with 10 critics vs SB3 SAC with 2 critics (both utd 1): {ours10_utd1 / sb3:.2f}x")


if __name__ == "__main__":
    main()
