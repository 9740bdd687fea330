"""What the sandbox adds to a reward evaluation: LLM-written reward code in its worker vs the same code in-process.

Our side: :class:`hilrl.llm.reward_code.CodeReward` on a :class:`~hilrl.data.buffers.RewardBatch` of
Push-v0 transitions (every state key of obs and next_obs plus the action: 68 floats per row), i.e. one request to the reused worker: the arrays out over a pipe as raw bytes,
the code run under its limits, the reward and components back. Baseline: the very same
``compute_reward`` compiled and called in this process on the same arrays (what the code costs with
no isolation at all). Added = ours - baseline, per batch; goal <= 1 ms for 2048 rows. Batches of the
two sides alternate; medians over ``--repeats`` calls each.

Run: ``python benchmarks/sandbox_overhead.py [--repeats 300]``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from hilrl.data.buffers import RewardBatch  # noqa: E402
from hilrl.llm.reward_code import CodeReward  # noqa: E402

# a Eureka-style Push reward: several transformed components with temperatures
CODE = """
import numpy as np

def compute_reward(obs, action, next_obs):
    tcp = next_obs["ee_pos"]
    cube = next_obs["object"][:, 0:3]
    goal = next_obs["object"][:, 7:10]
    reach = np.linalg.norm(tcp - cube, axis=-1)
    to_goal = np.linalg.norm(cube[:, :2] - goal[:, :2], axis=-1)
    reach_temperature = 0.05
    goal_temperature = 0.05
    reach_reward = np.exp(-reach / reach_temperature)
    goal_reward = np.exp(-to_goal / goal_temperature)
    effort = 0.01 * np.square(action).sum(axis=-1)
    total = reach_reward + 2.0 * goal_reward - effort
    return total, {"reach": reach_reward, "goal": goal_reward, "effort": effort}
"""


def push_batch(rows: int, seed: int = 0) -> RewardBatch:
    """``rows`` Push-v0 transitions under random actions, as the buffers hand them to a source."""
    from hilrl.config import EnvConfig
    from hilrl.apps.reward_search import probe_batch

    obs, actions, next_obs = probe_batch(EnvConfig(id="hilrl/Push-v0"), rows, seed)
    zeros = np.zeros(rows, bool)
    return RewardBatch(obs=obs, actions=actions, next_obs=next_obs, terminated=zeros,
                       truncated=zeros, env_rewards=np.zeros(rows, np.float32), reward_terms={}, intervened=zeros,
                       next_intervened=zeros, episode=np.zeros(rows, np.int64), step=np.zeros(rows, np.int32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=300, help="calls per side and batch size")
    args = parser.parse_args()

    namespace: dict = {}
    exec(compile(CODE, "reward.py", "exec"), namespace)  # noqa: S102 (the baseline: no isolation, by design)
    native = namespace["compute_reward"]
    source = CodeReward(CODE, name="push reward")
    rows = []
    try:
        for n in (256, 2048):
            batch = push_batch(n)
            floats = sum(v.shape[1] for v in batch.obs.values()) * 2 + batch.actions.shape[1]
            ours_r = source(batch)
            base_r = np.asarray(native(batch.obs, batch.actions, batch.next_obs)[0], np.float32)
            np.testing.assert_allclose(ours_r, base_r, rtol=1e-5, atol=1e-6)  # the same rewards
            times = {"ours": [], "native": []}
            for _ in range(10):  # warm-up
                source(batch)
            for _ in range(args.repeats):
                started = time.perf_counter()
                source(batch)
                times["ours"].append(time.perf_counter() - started)
                started = time.perf_counter()
                native(batch.obs, batch.actions, batch.next_obs)
                times["native"].append(time.perf_counter() - started)
            ours, base = (float(np.median(times[k])) * 1e3 for k in ("ours", "native"))
            p99 = float(np.percentile(times["ours"], 99)) * 1e3
            rows.append((f"reward eval, batch of {n} rows ({floats} floats/row), ms", f"{ours:.3f}", f"{base:.3f}",
                         f"{ours / base:.1f}", f"{ours - base:.3f}", "<= 1.0" if n == 2048 else "", f"{p99:.3f}"))
    finally:
        source.close()

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {describe_machine(f'numpy {np.__version__}')}, load average {os.getloadavg()[0]:.2f}")
    print(f"samples: median of {args.repeats} alternating calls per side; ours = sandbox worker (pipe, limits), "
          "baseline = the same compute_reward in-process")
    header = ("measure", "ours (sandbox)", "baseline (in-process)", "ratio", "added ms", "goal (added)", "ours p99")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
