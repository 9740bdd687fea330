"""Reward models learned from preferences: an ensemble of MLPs and its losses.

- Bradley–Terry over partial returns (Christiano et al. 2017; PEBBLE, Lee et al. 2021,
  rll-research/BPref ``reward_model.py``): P(σ1 ≻ σ2) = exp Σr̂(σ1) / (exp Σr̂(σ1) + exp Σr̂(σ2)),
  cross-entropy against the label (0.5 for "equal"). BPref's members are 3-layer MLPs with a tanh
  output, each trained on its own bootstrap of the labels.
- The regret model (Knox et al., arXiv:2206.02231) as a loss option: the logit of a pair is
  regret(σ2) − regret(σ1) with regret(σ) = V(s_0) − (Σr̂(σ) + V(s_L)), V a fixed value function of the
  start and end states (a reference critic): the learned reward is judged by how far each segment
  falls short of what V promises, not by its sum alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int = 1, out_act: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.LeakyReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


def bradley_terry_loss(returns_first: torch.Tensor, returns_second: torch.Tensor,
                       prefer_first: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of P(first ≻ second) = logistic(R1 − R2) against ``prefer_first`` in [0, 1]."""
    logits = returns_first - returns_second
    return nn.functional.binary_cross_entropy_with_logits(logits, prefer_first)


def regret_logits(returns_first: torch.Tensor, returns_second: torch.Tensor, value_first: torch.Tensor,
                  value_second: torch.Tensor) -> torch.Tensor:
    """regret(σ2) − regret(σ1); ``value_*`` = V(s_L) − V(s_0) of each segment (Knox et al.'s deterministic form)."""
    return (returns_first + value_first) - (returns_second + value_second)


class RewardEnsemble(nn.Module):
    """``members`` reward MLPs on step features; a step's reward is their mean (tanh outputs, BPref).

    :param in_dim: feature size (:func:`hilrl.feedback.preferences.segments.features`).
    :param members: ensemble size (PEBBLE: 3).
    :param hidden: hidden widths of each member.
    :param lr: Adam learning rate (BPref: 3e-4).
    :param seed: initialisation seed.
    """

    def __init__(self, in_dim: int, members: int = 3, hidden: Sequence[int] = (128, 128), lr: float = 3e-4,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.members = nn.ModuleList([mlp(in_dim, hidden, 1, nn.Tanh()) for _ in range(members)])
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.mean = torch.zeros(in_dim)
        self.std = torch.ones(in_dim)

    def set_normalisation(self, rows: np.ndarray) -> None:
        """Standardise inputs with these rows' statistics (set before the first fit)."""
        rows = torch.as_tensor(rows, dtype=torch.float32)
        self.mean, self.std = rows.mean(0), rows.std(0).clamp_min(1e-3)

    def per_member(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, ...)`` rewards of every member for features ``x`` of shape ``(..., D)``."""
        x = (x - self.mean) / self.std
        return torch.stack([m(x).squeeze(-1) for m in self.members])

    @torch.no_grad()
    def predict(self, features: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """Mean reward per row of ``(n, D)`` features."""
        out = [self.per_member(torch.as_tensor(features[i:i + chunk], dtype=torch.float32)).mean(0)
               for i in range(0, len(features), chunk)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    @torch.no_grad()
    def member_returns(self, segments: np.ndarray) -> np.ndarray:
        """``(M, n)`` partial returns of ``(n, L, D)`` segments under each member."""
        return self.per_member(torch.as_tensor(segments, dtype=torch.float32)).sum(-1).numpy()

    def fit(self, first: np.ndarray, second: np.ndarray, prefer_first: np.ndarray, epochs: int,
            batch_size: int = 128, value_deltas: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
        """Train every member for ``epochs`` passes over its bootstrap of the labelled pairs.

        ``first``/``second``: ``(n, L, D)`` segments; ``prefer_first``: ``(n,)`` in [0, 1];
        ``value_deltas``: with the regret loss, ``V(s_L) − V(s_0)`` of each side (``(n,)`` each).
        Returns the last epoch's loss and the training accuracy of the ensemble mean.
        """
        n = len(prefer_first)
        x1, x2 = torch.as_tensor(first, dtype=torch.float32), torch.as_tensor(second, dtype=torch.float32)
        target = torch.as_tensor(prefer_first, dtype=torch.float32)
        deltas = None if value_deltas is None else [torch.as_tensor(d, dtype=torch.float32) for d in value_deltas]
        boots = [self.rng.integers(0, n, n) for _ in self.members]
        loss_value = 0.0
        for _ in range(epochs):
            orders = [self.rng.permutation(b) for b in boots]
            total = 0.0
            for start in range(0, n, batch_size):
                loss = 0.0
                for k, member in enumerate(self.members):
                    idx = torch.as_tensor(orders[k][start:start + batch_size])
                    r1 = member((x1[idx] - self.mean) / self.std).squeeze(-1).sum(-1)
                    r2 = member((x2[idx] - self.mean) / self.std).squeeze(-1).sum(-1)
                    if deltas is None:
                        logits = r1 - r2
                    else:
                        logits = regret_logits(r1, r2, deltas[0][idx], deltas[1][idx])
                    loss = loss + nn.functional.binary_cross_entropy_with_logits(logits, target[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) / len(self.members)
            loss_value = total / max(1, -(-n // batch_size))
        returns = self.member_returns(first).mean(0) - self.member_returns(second).mean(0)
        decided = prefer_first != 0.5
        accuracy = float(((returns > 0) == (prefer_first > 0.5))[decided].mean()) if decided.any() else 1.0
        return {"loss": loss_value, "train_accuracy": accuracy}


def select_queries(model: RewardEnsemble | None, first: np.ndarray, second: np.ndarray, count: int, method: str,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``count`` candidate pairs to ask about (PEBBLE's ``feed_type``).

    ``uniform``: at random; ``disagreement``: largest std over members of P(σ1 ≻ σ2); ``entropy``:
    largest entropy of the ensemble mean's P(σ1 ≻ σ2). Without a trained model every method is uniform.
    """
    return select_rankings(model, np.stack([first, second], axis=1), count, method, rng)


def select_rankings(model: RewardEnsemble | None, groups: np.ndarray, count: int, method: str,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``count`` candidate K-way queries to ask about; ``groups``: ``(n, K, L, D)`` segments.

    A K-way ranking is scored over the K(K-1)/2 pairs it expands to (:func:`~hilrl.feedback.preferences.store.
    ranking_pairs`, the pairs the model is trained on): ``disagreement`` sums over them the std over members
    of P(σi ≻ σj) (PEBBLE's ``feed_type`` disagreement, summed), ``entropy`` sums the entropy of the
    ensemble mean's P(σi ≻ σj). For K = 2 both are PEBBLE's pair scores.
    """
    n = len(groups)
    if method not in ("uniform", "disagreement", "entropy"):
        raise ValueError(f"query selection {method!r}: use uniform, disagreement or entropy")
    if method == "uniform" or model is None:
        return rng.choice(n, size=min(count, n), replace=False)
    size = groups.shape[1]
    returns = model.member_returns(groups.reshape(n * size, *groups.shape[2:])).reshape(-1, n, size)  # (M, n, K)
    score = np.zeros(n)
    for i in range(size):
        for j in range(i + 1, size):
            prob = 1.0 / (1.0 + np.exp(-(returns[:, :, i] - returns[:, :, j])))  # (M, n)
            if method == "disagreement":
                score += prob.std(0)
            else:
                p = np.clip(prob.mean(0), 1e-6, 1 - 1e-6)
                score += -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return np.argsort(-score, kind="stable")[:count]
