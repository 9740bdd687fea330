"""Synthetic teachers: simulated people who label queries, for experiments without a person.

B-Pref's teachers (Lee et al. 2021, "B-Pref: Benchmarking Preference-Based Reinforcement
Learning", rll-research/BPref, ``reward_model.py: get_label``) judge by the partial return of the
task's true reward, with knobs for how human they are:

- ``beta`` (``teacher_beta``): rationality; P(σ1 ≻ σ2) = logistic(beta · (R1 − R2)); ``None`` (B-Pref's
  −1) = a perfectly rational teacher who always prefers the larger return;
- ``gamma`` (``teacher_gamma``): myopia; step t of an L-step segment weighs gamma^(L−1−t), so early
  steps count less;
- ``eps_mistake``: chance a label is flipped;
- ``skip_below`` (B-Pref's ``teacher_eps_skip`` threshold): skip when both returns are below it;
- ``equal_within`` (``teacher_eps_equal`` threshold): "equal" when the returns differ by less.

:class:`RegretTeacher` judges by regret instead (Knox et al., "Models of human preference for
learning reward functions", arXiv:2206.02231): P(σ1 ≻ σ2) = logistic(regret(σ2) − regret(σ1)), with
deterministic transitions regret(σ) = V*(s_0) − (Σ_t γ^t r_t + γ^L V*(s_L)), V* from a reference
critic (e.g. :mod:`hilrl.runtime.reference`'s). It tells apart segments that partial return cannot:
equal rewards on the way, but one ends where the optimal policy expects more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from hilrl.errors import HilrlError


def _logistic(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


class PartialReturnTeacher:
    """B-Pref's simulated teacher (module docstring).

    :param beta: rationality; ``None`` = perfectly rational.
    :param gamma: myopia discount of early steps (1 = none).
    :param eps_mistake: probability of flipping a label.
    :param skip_below: skip when both (discounted) returns are below this; ``None`` = never skip.
    :param equal_within: label "equal" when the returns differ by less than this (0 = never).
    :param seed: the teacher's RNG.
    """

    who = "synthetic"

    def __init__(self, beta: float | None = None, gamma: float = 1.0, eps_mistake: float = 0.0,
                 skip_below: float | None = None, equal_within: float = 0.0, seed: int = 0) -> None:
        if beta is not None and beta <= 0:
            raise HilrlError(f"teacher beta {beta} must be > 0 (rationality), or None for a perfect teacher")
        if not 0.0 < gamma <= 1.0:
            raise HilrlError(f"teacher gamma {gamma} must be in (0, 1] (1: not myopic)")
        if not 0.0 <= eps_mistake <= 1.0:
            raise HilrlError(f"teacher eps_mistake {eps_mistake} must be a probability in [0, 1]")
        self.beta, self.gamma, self.eps_mistake = beta, gamma, eps_mistake
        self.skip_below, self.equal_within = skip_below, equal_within
        self.rng = np.random.default_rng(seed)

    def utility(self, segment) -> float:
        rewards = np.asarray(segment.env_rewards, np.float64)
        weights = self.gamma ** np.arange(len(rewards) - 1, -1, -1)
        return float((weights * rewards).sum())

    def label_pair(self, first, second) -> str:
        """``first``, ``second``, ``equal`` or ``skip`` for two segments."""
        u1, u2 = self.utility(first), self.utility(second)
        return self._decide(u1, u2, u1 - u2)

    def _decide(self, u1: float, u2: float, margin: float) -> str:
        if self.skip_below is not None and max(u1, u2) < self.skip_below:
            return "skip"
        if abs(margin) < self.equal_within:
            return "equal"
        if self.beta is None:
            label = "first" if margin > 0 else "second"
        else:
            label = "first" if self.rng.random() < _logistic(self.beta * margin) else "second"
        if self.rng.random() < self.eps_mistake:
            label = "second" if label == "first" else "first"
        return label

    def rank(self, segments: Sequence) -> list[int]:
        """A K-way ranking (indices, best first) by utility (ties kept in order)."""
        utilities = [self.utility(s) for s in segments]
        return [int(i) for i in np.argsort(-np.asarray(utilities), kind="stable")]


class RegretTeacher(PartialReturnTeacher):
    """Knox et al.'s regret teacher (module docstring); same knobs as :class:`PartialReturnTeacher`.

    :param value: ``V*(obs_rows) -> (n,)``: the optimal value of states given as rows of the reward
        model's observation keys (a segment's ``start_obs`` and ``end_obs``).
    :param discount: γ of the regret sum (the reference critic's discount; 1 = undiscounted, Knox et al.).
    """

    def __init__(self, value: Callable[[np.ndarray], np.ndarray], discount: float = 1.0, **knobs) -> None:
        super().__init__(**knobs)
        self.value, self.discount = value, discount

    def regret(self, segment) -> float:
        """V*(s_0) − (Σ_t γ^t r_t + γ^L V*(s_L)) of a segment (deterministic transitions)."""
        rewards = np.asarray(segment.env_rewards, np.float64)
        v_start, v_end = np.asarray(self.value(np.stack([segment.start_obs, segment.end_obs])), np.float64)
        discounts = self.discount ** np.arange(len(rewards))
        return float(v_start - ((discounts * rewards).sum() + self.discount ** len(rewards) * v_end))

    def utility(self, segment) -> float:
        return -self.regret(segment)

    def preference_probability(self, first, second) -> float:
        """P(first ≻ second) = logistic(regret(second) − regret(first)) (β = 1 when the teacher is perfect)."""
        return _logistic((self.beta or 1.0) * (self.regret(second) - self.regret(first)))


def make_teacher(spec: dict | None, seed: int, value: Callable | None = None):
    """A teacher from the source's ``teacher:`` settings (``None``: a person labels on the page)."""
    if spec is None:
        return None
    spec = dict(spec)
    kind = spec.pop("kind", "partial_return")
    if kind == "partial_return":
        spec.pop("discount", None)
        return PartialReturnTeacher(seed=seed, **spec)
    if kind == "regret":
        discount = spec.pop("discount", 1.0)
        spec.pop("critic", None)
        if value is None:
            raise HilrlError("teacher kind 'regret' needs teacher.value: 'module:function' returning V*(obs_rows), "
                             "e.g. from a reference critic (benchmarks/train_reference_critic.py)")
        return RegretTeacher(value, discount=discount, seed=seed, **spec)
    raise HilrlError(f"teacher.kind {kind!r}: use partial_return or regret")
