"""Gradient updates per second of hilrl's SAC (2 and 10 critics) against stable-baselines3's SAC and JAX RLPD.

Same network sizes (hidden 256x256), batch 256, state observations of ``--obs-dim`` (25)
and ``--act-dim`` (4) actions, filled replay buffers, one run. Both sides include
sampling from their replay buffer, as in training. SB3 is timed through
``model.train(gradient_steps=K, batch_size=256)`` (one critic update per actor update,
i.e. utd 1); ours through ``SAC.train_step`` at utd 1 and at ``--utd``.

The JAX peer (``jax_rlpd.py``, the update of ikostrikov/rlpd's ``SACLearner`` in one ``jax.jit``, the
utd loop unrolled as RLPD does, and once more in ``lax.scan``) runs in the same process with the same
shapes, critics and utd, sampling its minibatches from numpy arrays as RLPD's replay buffer does. It needs
the ``[bench]`` extra (jax, flax, optax); without it its rows are skipped with a note. Its fraction of the
bound uses XLA's own matmul rate at the same GEMM shapes (a jitted probe), ours and SB3's torch's.
For a single-core figure pin the whole process (``taskset -c 0``): XLA's flags do not hold it to one thread.

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

Our rows come eager, with ``algo.execution.fused_layer_norm`` (the C++ kernel ``csrc/layer_norm.cpp`` of
``hilrl.policies.sac``, built on first use; ``--no-fused`` leaves those rows out), and with
``algo.execution.cpu_fused_update`` (the whole update as one C++ call, ``csrc/sac_update.cpp``,
no autograd; ``--no-cpp-update`` leaves those rows out); ``hilrl.policies.sac.fast`` runs both.

The few-demo recipe rows (``sim_configs/pick_cube_few_demos.yaml``'s update: 2 critics, utd 2, IBRL's BC
proposal in the target, the TD3+BC term on a quarter of demo rows, standardised states, fixed temperature) run
eager and with the C++ update; a demo buffer (the first ``--buffer // 10`` transitions) joins the online one.
IBRL adds per critic step one prior forward and the target members at the prior's action to the count
(``update_flops(ibrl=True)``). ``--recipe-only`` times just these two rows (and the matmul probe).

``--levers`` times instead what each speed lever gives our update (2 critics at utd 1 and ``--utd``,
10 critics at utd 1), in turn with the eager reference: the ``foreach`` Adam instead of the fused one, the
fused LayerNorm kernel, the compiled critic ensembles (``execution.compile_critic``), the whole
update under ``torch.compile`` with compiled autograd, the whole update in C++ (``execution.cpu_fused_update``),
and (10 critics) every member in one batched matmul instead of two at a time (``networks.CPU_MEMBER_CHUNK``).

Run: ``taskset -c 0 python benchmarks/learner_throughput.py [--device cuda] [--threads 1] [--compile]
[--cuda-graph] [--levers]``.
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
from hilrl.policies import networks
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
                 min_critics: int = 2, ibrl: bool = False) -> float:
    """Matmul FLOPs of one RLPD update (see the module docstring for the counting); ``ibrl``: with the BC prior's
    proposal in the target (one prior forward and ``min_critics`` more target members per critic step)."""
    actor = layer_shapes(obs_dim, hidden, 2 * act_dim)
    critic = layer_shapes(obs_dim + act_dim, hidden, 1)
    fa, fq = forward_flops(actor, batch), forward_flops(critic, batch)
    fa1, fq1 = forward_flops(actor[:1], batch), forward_flops(critic[:1], batch)
    per_critic_step = fa + min_critics * fq + critics * (3 * fq - fq1)
    if ibrl:
        per_critic_step += fa + min_critics * fq
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


# The update of sim_configs/pick_cube_few_demos.yaml (its algo: section, less obs_keys); the BC prior's fit
# (in the warm-up, not timed) is shortened to 200 steps.
FEW_DEMO_RECIPE = dict(gamma=0.97, init_temperature=0.01, learn_temperature=False, normalisation={"enabled": True},
                       variants={"bc_coef": 1.0, "bc_proposal": True, "bc_prior_updates": 200}, demo_fraction=0.25)


def ours_step(args: argparse.Namespace, device: torch.device, data, critics: int, utd: int,
              overrides: dict | None = None, change: Callable[[SAC], None] | None = None,
              demos: int = 0) -> Callable[[], None]:
    """One ``SAC.train_step`` on a filled buffer, after ``--warmup`` updates (which include any compilation);
    ``change`` alters the learner first (a speed lever of ``--levers``); ``demos``: that many of the transitions
    also fill a demo buffer."""
    obs, next_obs, actions, rewards, terminated = data
    n = len(obs)
    obs_space = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)})
    act_space = gym.spaces.Box(-1, 1, (args.act_dim,), np.float32)
    config = SACConfig(num_critics=critics, utd=utd, hidden=tuple(args.hidden), batch_size=args.batch,
                       **(overrides or {}))
    learner = SAC(obs_space, act_space, config, device=device, seed=0)
    if change is not None:
        change(learner)
    online = ReplayBuffer(obs_space, act_space, n)
    online.extend({"state": obs}, actions, rewards, {"state": next_obs}, terminated, np.zeros(n, bool))
    demo = None
    if demos:
        demo = ReplayBuffer(obs_space, act_space, demos)
        demo.extend({"state": obs[:demos]}, actions[:demos], rewards[:demos], {"state": next_obs[:demos]},
                    terminated[:demos], np.zeros(demos, bool))
    for _ in range(args.warmup):
        learner.train_step(online, demo)
    return lambda: learner.train_step(online, demo)


def jax_steps(args: argparse.Namespace, data) -> tuple[dict[str, Callable[[], None]], list, float, str]:
    """The JAX RLPD rows (critics 2 and 10, utd 1 and ``--utd``; the utd loop also in ``lax.scan``) and XLA's
    matmul probe, or nothing and the reason when the ``[bench]`` extra is not installed."""
    try:
        import jax_rlpd

        jax_rlpd.versions()
    except ImportError as exc:
        return {}, [], 0.0, f"JAX RLPD rows skipped: {exc.name} is not installed (pip install -e .[bench])"
    probe, probe_flops = jax_rlpd.matmul_probe(args.obs_dim, args.act_dim, args.hidden, args.batch)
    steps: dict[str, Callable[[], None]] = {"jax-matmul": probe}
    rows = []
    for critics in (2, 10):
        for utd in sorted({1, args.utd}):
            for scan in (False, True) if utd > 1 else (False,):
                key = f"jax{'-scan' if scan else ''}/{critics}/{utd}"
                steps[key] = jax_rlpd.build(args.obs_dim, args.act_dim, args.hidden, args.batch, critics, utd, data,
                                            scan=scan)
                for _ in range(args.warmup):
                    steps[key]()
                name = "JAX RLPD" + (" (utd in lax.scan)" if scan else "")
                rows.append((key, name, critics, utd, 0.0))
    return steps, rows, probe_flops, jax_rlpd.versions()


def lever_steps(args: argparse.Namespace, device: torch.device, data) -> tuple[dict[str, Callable[[], None]], list]:
    """Our update (2 critics) with one speed lever changed at a time, next to the eager reference."""
    import torch._dynamo

    def foreach_adam(learner: SAC) -> None:
        for name in ("critic_optimizer", "actor_optimizer", "temperature_optimizer"):
            old = getattr(learner, name)
            setattr(learner, name, torch.optim.Adam(old.param_groups[0]["params"], lr=old.param_groups[0]["lr"],
                                                    foreach=True))

    def whole_update(learner: SAC) -> None:
        torch._dynamo.config.compiled_autograd = True
        learner.eager_update = torch.compile(learner.eager_update, dynamic=False)

    levers: list[tuple[str, dict, Callable[[SAC], None] | None]] = [
        ("eager (reference)", {}, None),
        ("Adam foreach instead of fused", {}, foreach_adam),
        ("fused LayerNorm kernel", {"execution": {"fused_layer_norm": True}}, None),
        ("compiled critic ensembles", {"execution": {"compile_critic": True}}, None),
        ("whole update compiled", {}, whole_update),
        ("whole update in C++", {"execution": {"cpu_fused_update": True}}, None),
    ]
    steps, rows = {}, []
    for critics, utd in ((2, 1), (2, args.utd), (10, 1)):
        for name, overrides, change in levers:
            key = f"lever/{name}/{critics}/{utd}"
            steps[key] = ours_step(args, device, data, critics, utd, overrides, change)
            rows.append((key, name, critics, utd, 0.0))
        if critics > networks.CPU_MEMBER_CHUNK:
            key = f"lever/unchunked/{critics}/{utd}"
            steps[key] = unchunked(ours_step(args, device, data, critics, utd))
            rows.append((key, "all members in one matmul", critics, utd, 0.0))
    return steps, rows


def unchunked(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with the critic members run all at once instead of ``CPU_MEMBER_CHUNK`` at a time."""
    def run() -> None:
        chunk, networks.CPU_MEMBER_CHUNK = networks.CPU_MEMBER_CHUNK, 1 << 30
        try:
            step()
        finally:
            networks.CPU_MEMBER_CHUNK = chunk

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--obs-dim", type=int, default=25)
    parser.add_argument("--act-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--utd", type=int, default=8, help="the utd>1 rows use this")
    parser.add_argument("--iterations", type=int, default=30, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--buffer", type=int, default=20_000, help="transitions in each replay buffer")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time our update captured as a CUDA graph (rows added to the eager ones)")
    parser.add_argument("--compile", action="store_true",
                        help="also time our learner with execution.compile_critic (rows added; warm-up compiles)")
    parser.add_argument("--skip-sb3", action="store_true")
    parser.add_argument("--skip-jax", action="store_true", help="leave out the JAX RLPD peer rows")
    parser.add_argument("--no-fused", action="store_true", help="leave out the rows with execution.fused_layer_norm")
    parser.add_argument("--no-cpp-update", action="store_true",
                        help="leave out the rows with execution.cpu_fused_update")
    parser.add_argument("--recipe-only", action="store_true",
                        help="time only the few-demo recipe rows (IBRL + TD3+BC), eager and with the C++ update")
    parser.add_argument("--levers", action="store_true",
                        help="time what each speed lever gives our update instead of the comparison table")
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

    def flops(critics: int, utd: int, ibrl: bool = False) -> float:
        return update_flops(args.obs_dim, args.act_dim, args.hidden, args.batch, critics, utd, ibrl=ibrl)

    probe, probe_flops = matmul_probe(args.obs_dim, args.act_dim, args.hidden, args.batch, device)
    steps: dict[str, Callable[[], None]] = {"matmul": probe}
    iterations = {"matmul": args.iterations * 4}
    rows = []  # (key, name, critics, utd, flops per update)
    notes: list[str] = []
    jax_probe_flops = 0.0
    if args.levers:
        lever_table, lever_rows = lever_steps(args, device, data)
        steps.update(lever_table)
        rows += lever_rows
    elif args.recipe_only:
        pass
    else:
        if not args.skip_sb3:
            steps["sb3"] = sb3_step(args, device, data)
            iterations["sb3"] = 1  # one call runs --iterations updates
            rows.append(("sb3", "stable-baselines3 SAC", 2, 1, 0.0))
        variants: list[tuple[str, dict]] = [("", {})]
        if device.type == "cpu" and not (args.no_fused and args.no_cpp_update):
            from hilrl.policies.sac.fast import kernels_buildable

            missing = kernels_buildable()
            if missing is not None:
                notes.append(f"fused LayerNorm and C++ update rows skipped: the C++ build needs {missing}")
            if missing is None and not args.no_fused:
                variants.append((" (fused LayerNorm)", {"execution": {"fused_layer_norm": True}}))
            if missing is None and not args.no_cpp_update:
                variants.append((" (C++ update)", {"execution": {"cpu_fused_update": True}}))
        if args.compile:
            variants.append((" (compiled critic)", {"execution": {"compile_critic": True}}))
        if args.cuda_graph:
            variants.append((" (CUDA graph)", {"execution": {"cuda_graph": True}}))
        for suffix, overrides in variants:
            for critics in (2, 10):
                for utd in sorted({1, args.utd}):
                    key = f"ours{suffix}/{critics}/{utd}"
                    steps[key] = ours_step(args, device, data, critics, utd, overrides)
                    rows.append((key, f"hilrl SAC{suffix}", critics, utd, 0.0))
        if not args.skip_jax and device.type == "cpu":
            jax_table, jax_rows, jax_probe_flops, jax_note = jax_steps(args, data)
            steps.update(jax_table)
            rows += jax_rows
            notes.append(jax_note)
            iterations["jax-matmul"] = args.iterations * 4
    if not args.levers and device.type == "cpu":
        from hilrl.policies.sac.fast import kernels_buildable

        recipes = [("", {})] + ([] if kernels_buildable() or args.no_cpp_update
                                else [(" (C++ update)", {"execution": {"cpu_fused_update": True}})])
        for suffix, overrides in recipes:
            key = f"recipe{suffix}/2/2"
            steps[key] = ours_step(args, device, data, 2, 2, {**FEW_DEMO_RECIPE, **overrides},
                                   demos=args.buffer // 10)
            rows.append((key, f"few-demo recipe{suffix}", 2, 2, 0.0))
    rows = [(key, name, critics, utd, flops(critics, utd, ibrl=key.startswith("recipe")))
            for key, name, critics, utd, _ in rows]
    for key in steps:
        iterations.setdefault(key, args.iterations)
    rates = interleaved_best_rates(steps, iterations, args.repeats, device)
    rate = probe_flops * rates["matmul"]
    jax_rate = jax_probe_flops * rates.get("jax-matmul", 0.0)
    if "sb3" in rates:
        rates["sb3"] *= args.iterations
    sb3 = rates.get("sb3")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {device_name} | {platform.platform()} | python {platform.python_version()} "
          f"| {affinity} of {os.cpu_count()} cores usable by this process")
    print(f"torch {torch.__version__} | device {device} | threads {torch.get_num_threads()} "
          f"| load average at start {load:.2f} (other tenants make rates noisy)")
    print(f"command: {shlex.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"batch {args.batch}, hidden {args.hidden}, obs dim {args.obs_dim}, action dim {args.act_dim}; "
          f"best of {args.repeats} x {args.iterations} updates, every row and the matmul probes timed in turn")
    print(f"matmul rate at these shapes (fwd + 2 bwd GEMMs): torch {rate / 1e9:.1f} GFLOP/s"
          + (f", XLA {jax_rate / 1e9:.1f} GFLOP/s" if jax_rate else ""))
    for note in notes:
        print(note)
    header = (f"{'learner':<34}{'critics':>8}{'utd':>5}{'actor upd/s':>13}{'critic upd/s':>14}"
              f"{'MFLOP/upd':>11}{'of bound':>10}{'vs SB3':>8}{'vs eager' if args.levers or args.recipe_only else 'vs JAX':>9}")
    print(header)
    print("-" * len(header))
    jax_rates = {(critics, utd): rates[key] for key, _, critics, utd, _ in rows if key.startswith("jax/")}
    reference = {(critics, utd): rates[key] for key, _, critics, utd, _ in rows if key.startswith("lever/eager")}
    recipe_eager = rates.get("recipe/2/2")
    for key, name, critics, utd, f in rows:
        ups = rates[key]
        own_rate = jax_rate if key.startswith("jax") else rate
        versus_sb3 = f"{ups / sb3:.2f}x" if sb3 and utd == 1 else "-"
        peer = reference if args.levers else jax_rates
        versus_jax = f"{ups / peer[critics, utd]:.2f}x" if (critics, utd) in peer else "-"
        if key.startswith("recipe"):  # against the recipe's own eager row (the vs-JAX column is 'vs eager' here)
            versus_jax = f"{ups / recipe_eager:.2f}x"
        print(f"{name:<34}{critics:>8}{utd:>5}{ups:>13.1f}{ups * utd:>14.1f}{f / 1e6:>11.0f}"
              f"{ups / (own_rate / f):>10.2f}{versus_sb3:>8}{versus_jax:>9}")
    if args.levers:
        print("'vs eager': the ratio to the eager reference row with the same utd")
    if recipe_eager:
        print("few-demo recipe rows: the last column is the ratio to the recipe's eager row")
    if device.type == "cuda":
        print("note: on a GPU these small GEMMs are launch-bound, so the measured 'matmul rate' is far below peak "
              "and 'of bound' can exceed 1; compare updates/s with SB3 instead.")
    ours10 = max((rates[k] for k, _, c, u, _ in rows if k.startswith("ours") and c == 10 and u == 1), default=0.0)
    if jax_rates:
        best = {}
        for key, _, critics, utd, _ in rows:
            if key.startswith("ours") and (critics, utd) in jax_rates:
                best[critics, utd] = max(best.get((critics, utd), 0.0), rates[key] / jax_rates[critics, utd])
        print("best hilrl SAC vs JAX RLPD: " + ", ".join(f"{c} critics utd {u}: {r:.2f}x" for (c, u), r in best.items()))
    if sb3 and ours10:
        print(f"best hilrl SAC with 10 critics vs SB3 SAC with 2 critics (both utd 1): {ours10 / sb3:.2f}x")


if __name__ == "__main__":
    main()
