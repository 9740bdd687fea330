"""Is the critic overestimating? Q(s0, a0) of finished episodes against their discounted return G0.

An off-policy critic fed a few demos can value the states the policy starts from far above what
its episodes then earn (measured on PickCube with 10 demos: Q 29 vs G0 4.9 after 1k env steps),
while the demo states sit at or below their Monte-Carlo return; the mean Q of a training batch
mixes both kinds of rows and hides it. :func:`start_values` takes the last finished episodes of a
buffer (their first row, step 0, and every row after it in the same episode), and returns the
critic's mean Q(s0, a0) (the stored action, the ensemble's mean), G0 = sum_t gamma^t r_t under the
run's reward source, and their gap. G0 runs to the episode's end: where the episode was cut by the
time limit the critic bootstraps past it, so Q may exceed G0 by up to gamma^T V(s_T) without
overestimating.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hilrl.data.buffers import ReplayBuffer


def start_values(q_value: Any, buffer: ReplayBuffer, gamma: float, episodes: int = 10) -> dict[str, float] | None:
    """``{"q_start", "return_start", "overestimation"}`` over the last ``episodes`` finished episodes in
    ``buffer`` whose first step it still holds, or ``None`` when it holds none.

    ``q_value(obs, actions) -> (B,)`` is the learner's critic (``SAC.q_value``); rewards are the
    buffer's reward source's (``buffer.rewards_at``).
    """
    n = len(buffer)
    if n == 0 or "episode" not in buffer.extras or "step" not in buffer.extras:
        return None
    episode, step = buffer.extras["episode"][:n], buffer.extras["step"][:n]
    ends = buffer.terminated[:n] | buffer.truncated[:n]
    finished = np.unique(episode[ends])
    started = np.unique(episode[step == 0])
    chosen = np.intersect1d(finished, started)
    if len(chosen) == 0:
        return None
    # the most recent ones: online ids count up; demo ids count down from -1, so take the far end too
    chosen = chosen[-episodes:] if chosen[-1] >= 0 else chosen[:episodes]
    first_rows, returns = [], []
    for e in chosen:
        rows = np.flatnonzero(episode == e)
        rows = rows[np.argsort(step[rows], kind="stable")]
        rewards = buffer.rewards_at(rows).astype(np.float64)
        returns.append(float(np.sum(rewards * gamma ** np.arange(len(rows)))))
        first_rows.append(rows[0])
    batch = buffer.gather(np.asarray(first_rows))
    q = float(np.mean(q_value(batch["obs"], batch["actions"])))
    g = float(np.mean(returns))
    return {"q_start": q, "return_start": g, "overestimation": q - g}
