"""PEBBLE's unsupervised pre-training reward: state entropy from k-nearest-neighbour distances.

Lee et al. 2021, "PEBBLE: Feedback-Efficient Interactive Reinforcement Learning via Relabeling
Experience and Unsupervised Pre-training" (rll-research/BPref ``utils.compute_state_entropy`` and
``SACAgent.update_critic_state_ent``): for the first ``num_unsup_steps`` env steps the agent is
rewarded by a particle estimate of state entropy, the distance from a transition's state to its k-th
nearest neighbour among the stored states (k = 5; BPref takes the (k+1)-th smallest distance, the
state itself being among the stored ones), divided by a running standard deviation of those
distances. States far from everything seen so far pay more, so the policy spreads out before the
first queries and the segments people are asked about differ.

Here the reward is a :class:`~hilrl.feedback.rewards.RewardSource`-style function of stored rows: the
reference states are a snapshot of the buffer's states (at most ``max_reference`` of them, drawn at
random), taken by :meth:`StateEntropy.refresh`; the preference source refreshes it every
``entropy_refresh`` env steps and bumps its version, so the stored rows are re-rewarded in bulk
against the grown buffer (BPref recomputes a sampled batch against the whole buffer at every update).
"""

from __future__ import annotations

import numpy as np


def knn_distances(query: np.ndarray, reference: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance from each row of ``query`` ``(n, D)`` to its ``k``-th nearest row of ``reference`` ``(m, D)``.

    ``k`` counts from 1; a query row that is also in ``reference`` finds itself at distance 0, so pass
    ``k + 1`` to skip it (as BPref's ``compute_state_entropy`` does). ``k`` larger than ``m`` takes the farthest.
    """
    query = np.asarray(query, np.float64)
    reference = np.asarray(reference, np.float64)
    if not len(reference):
        return np.zeros(len(query), np.float32)
    kth = min(k, len(reference)) - 1
    ref_sq = (reference ** 2).sum(1)
    out = np.empty(len(query), np.float32)
    for start in range(0, len(query), chunk):
        rows = query[start:start + chunk]
        sq = (rows ** 2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * rows @ reference.T
        out[start:start + chunk] = np.sqrt(np.partition(np.maximum(sq, 0.0), kth, axis=1)[:, kth])
    return out


class RunningStd:
    """Running mean and variance of every value seen (Chan et al.'s parallel update; BPref's
    ``TorchRunningMeanStd``)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        if not len(values):
            return
        n, mean, m2 = len(values), float(values.mean()), float(((values - values.mean()) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count > 1 else 1.0


class StateEntropy:
    """The intrinsic reward ``d_k(s') / running std`` of PEBBLE's pre-training, on state features.

    :param k: the neighbour (PEBBLE: 5).
    :param max_reference: reference states kept per snapshot (a random subset beyond this).
    :param seed: the subset's draw.
    """

    def __init__(self, k: int = 5, max_reference: int = 10_000, seed: int = 0) -> None:
        self.k, self.max_reference = k, max_reference
        self.rng = np.random.default_rng(seed)
        self.reference = np.zeros((0, 0), np.float32)
        self.stats = RunningStd()

    def refresh(self, states: np.ndarray) -> None:
        """Take ``states`` ``(m, D)`` (the buffer's, now) as the reference set."""
        states = np.asarray(states, np.float32)
        if len(states) > self.max_reference:
            states = states[self.rng.choice(len(states), self.max_reference, replace=False)]
        self.reference = states

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """Rewards of rows whose resulting states are ``states`` ``(n, D)``."""
        if not len(self.reference):
            return np.zeros(len(states), np.float32)
        distances = knn_distances(states, self.reference, self.k + 1)
        self.stats.update(distances)
        return (distances / max(self.stats.std, 1e-8)).astype(np.float32)
