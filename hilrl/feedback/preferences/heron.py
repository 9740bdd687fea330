"""HERON: a reward model from a person's ranking of reward factors, no queries needed.

Bukharin et al., "Deep Reinforcement Learning from Hierarchical Preference Design" (arXiv:2309.02632;
abukharin3/HERON @ 7d6d03a, ``ClassicControl/cleanrl/ddpg_rm.py``): the person ranks the task's
reward factors by importance (here its ``info["reward_terms"]``, plus ``action_cost`` = ‖a‖²).
Two transitions are compared by the hierarchical rule (:func:`heron_compare`): at level k, i beats
j when ``sign·f_k(i) > sign·f_k(j) + σ_k`` (and j beats i likewise), else go down a level; pairs
tied at every level are skipped. ``σ_k`` = std of factor k over the stored history × ``margin``
(HERON: 1). A Bradley–Terry reward MLP on (obs, factors) trains on the decided pairs, every
``update_every`` env steps from ``start_after`` on (HERON: 400 and 1000, lr 1e-4, (256, 256)).
HERON's code computes rewards at insertion and never relabels; here the source's ``version`` is
bumped after each update, so every stored row gets the current model's reward (PEBBLE-style).

``reward: {source: heron, kwargs: {factors: [{term: goal_distance, better: lower}, ...]}}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hilrl.errors import HilrlError
from hilrl.feedback.preferences.segments import features, feature_keys
from hilrl.feedback.preferences.source import parse_settings, require_run_dir


def heron_compare(first: np.ndarray, second: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """HERON's hierarchical comparison of pairs: +1 (first wins), -1 (second wins), 0 (tied at every level).

    ``first``/``second``: ``(n, K)`` factor values with the sign applied (larger is better), columns in
    importance order; ``sigmas``: ``(K,)`` margins. At level k the pair is decided when one side is
    better by more than ``sigmas[k]``; otherwise the next level decides.
    """
    first, second = np.atleast_2d(first), np.atleast_2d(second)
    outcome = np.zeros(len(first), np.int8)
    for k in range(first.shape[1]):
        open_ = outcome == 0
        outcome[open_ & (first[:, k] > second[:, k] + sigmas[k])] = 1
        outcome[open_ & (second[:, k] > first[:, k] + sigmas[k])] = -1
    return outcome


class Factor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    term: str = Field(description="a key of the task's info['reward_terms'], or action_cost (= |a|^2)")
    better: Literal["lower", "higher"] = Field(description="which values the person prefers")


class HeronSettings(BaseModel):
    """``reward.kwargs`` of ``reward: {source: heron}`` (module docstring)."""

    model_config = ConfigDict(extra="forbid")
    factors: list[Factor] = Field(min_length=1, description="the reward factors, most important first")
    margin: float = Field(1.0, ge=0, description="sigma_k = std of factor k x margin (HERON: 1)")
    start_after: int = Field(1000, ge=1, description="env steps before the first update (HERON: 1000)")
    update_every: int = Field(400, ge=1, description="env steps between updates (HERON: 400)")
    pairs: int = Field(2048, ge=2, description="random pairs of stored transitions compared per update")
    epochs: int = Field(20, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    lr: float = Field(1e-4, gt=0, description="HERON: 1e-4")
    obs_keys: list[str] | None = Field(None, description="obs keys the model reads beside the factors")
    reward_scale: float = Field(1.0, gt=0, description="the standardised reward times this")


def factor_matrix(reward_terms: dict[str, np.ndarray], actions: np.ndarray, factors: Sequence[Factor]) -> np.ndarray:
    """``(n, K)`` signed factor values (larger is better), columns in the ranking's order."""
    columns = []
    for factor in factors:
        if factor.term == "action_cost":
            values = (np.asarray(actions, np.float32) ** 2).sum(-1)
        elif factor.term in reward_terms:
            values = np.asarray(reward_terms[factor.term], np.float32)
        else:
            raise HilrlError(f"HERON factor {factor.term!r} is not among the task's reward terms "
                             f"{sorted(reward_terms)} (or action_cost); fix reward.kwargs.factors")
        columns.append(values if factor.better == "higher" else -values)
    return np.stack(columns, axis=1)


class HeronSource:
    """HERON's reward model as a :class:`~hilrl.feedback.rewards.TrainableRewardSource`.

    :param settings: :class:`HeronSettings`.
    :param seed: pairs and initialisation.
    """

    wants_sim_state = False

    def __init__(self, settings: HeronSettings, seed: int = 0) -> None:
        self.settings, self.seed = settings, seed
        self.version = 0
        self.rng = np.random.default_rng(seed + 31)
        self.model = None
        self.keys: list[str] | None = None
        self.norm = (0.0, 1.0)
        self.last: dict[str, float] = {}

    def _inputs(self, obs, actions, reward_terms) -> np.ndarray:
        self.keys = self.keys or feature_keys(obs, self.settings.obs_keys)
        return np.concatenate([features(obs, actions, self.keys),
                               factor_matrix(reward_terms, actions, self.settings.factors)], axis=1)

    def __call__(self, batch) -> np.ndarray:
        if self.model is None:
            return np.zeros(len(batch), np.float32)
        raw = self._predict(self._inputs(batch.next_obs, batch.actions, batch.reward_terms))
        return (self.settings.reward_scale * (raw - self.norm[0]) / self.norm[1]).astype(np.float32)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1).numpy()

    def after_step(self, transition: dict, replay: Any, env_steps: int) -> dict[str, float] | None:
        s = self.settings
        if env_steps < s.start_after or (env_steps - s.start_after) % s.update_every:
            return None
        self.update(replay.online)
        return dict(self.last)

    def update(self, online) -> None:
        """Compare random pairs of stored transitions by the hierarchy; fit the BT model on the decided ones."""
        import torch

        from hilrl.feedback.preferences.models import mlp

        s, n = self.settings, len(online)
        if n < 2:
            return
        batch = online.reward_batch(np.arange(n))
        x = self._inputs(batch.next_obs, batch.actions, batch.reward_terms)
        signed = factor_matrix(batch.reward_terms, batch.actions, s.factors)
        sigmas = signed.std(0) * s.margin
        i, j = self.rng.integers(0, n, s.pairs), self.rng.integers(0, n, s.pairs)
        outcome = heron_compare(signed[i], signed[j], sigmas)
        decided = outcome != 0
        if not decided.any():
            return
        if self.model is None:
            torch.manual_seed(self.seed)
            body = mlp(x.shape[1], s.hidden, 1)
            self.mean = torch.as_tensor(x.mean(0), dtype=torch.float32)
            self.std = torch.as_tensor(x.std(0).clip(1e-3), dtype=torch.float32)
            self.model = torch.nn.Sequential(_Standardise(self.mean, self.std), body)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        xi = torch.as_tensor(x[i[decided]], dtype=torch.float32)
        xj = torch.as_tensor(x[j[decided]], dtype=torch.float32)
        target = torch.as_tensor(outcome[decided] > 0, dtype=torch.float32)
        for _ in range(s.epochs):
            for start in range(0, len(target), 256):
                cut = slice(start, start + 256)
                logits = self.model(xi[cut]).squeeze(-1) - self.model(xj[cut]).squeeze(-1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[cut])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        raw = self._predict(x)
        # shifted so the best stored row gets 0, as the preference source does (a reward positive near the goal
        # pays the agent to avoid the success that ends the episode): hilrl.feedback.preferences.source
        self.norm = (float(raw.max()), float(max(raw.std(), 1e-6)))
        self.version += 1
        self.last = {"version": float(self.version), "decided_pairs": float(decided.sum()),
                     "skipped_pairs": float((~decided).sum()), "fit_loss": float(loss.detach())}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        order = " > ".join(f"{f.term} ({f.better})" for f in self.settings.factors)
        return f"HeronSource({order}, version={self.version})"


class _Standardise:
    def __new__(cls, mean, std):  # a tiny nn.Module built lazily so that importing this file needs no torch
        import torch

        class Standardise(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.register_buffer("mean", mean)
                self.register_buffer("std", std)

            def forward(self, x):
                return (x - self.mean) / self.std

        return Standardise()


def make_heron_source(config: Any, context: Any) -> HeronSource:
    """``reward: {source: heron, kwargs: {...}}`` (registered in :mod:`hilrl.feedback.rewards`)."""
    settings = parse_settings(HeronSettings, config.kwargs, "heron")
    require_run_dir(context, "heron")
    return HeronSource(settings, seed=context.seed)
