"""The behaviour prior pi_BC of Demonstration-Regularized RL: a tanh-Gaussian fitted to demo actions.

SAC with ``variants.kl_coef > 0`` replaces ``alpha * log pi`` by ``kl_coef * (log pi - log pi_BC)``
(Tiapkin et al. 2023, "Demonstration-Regularized RL", arXiv:2310.17303). The prior here is
fitted by maximum likelihood on the demo buffer at the learner's first update, and
travels in the learner's checkpoints. SAC with ``variants.bc_proposal`` uses the same prior's mean action
as IBRL's imitation proposal.

Demo actions often sit on the action box's edge (saturated translations, the gripper's
+-1), where ``atanh`` is infinite. They are pulled in to ``+-ACTION_BOUND`` before the
fit and before every log-probability. The prior's std (before the tanh) is kept above
``min_std``: maximum likelihood on a deterministic demonstrator drives it to zero, and a
prior that sharp makes ``log pi_BC`` of any other action hugely negative (measured: with a
floor of 0.0067 the KL term reached 1e5 at the first update and the critic's targets ran
away to -3000). The floor sets how far from the demos the KL term lets the policy explore.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hilrl.errors import HilrlError
from hilrl.policies.encoders import ObservationEncoder
from hilrl.policies.networks import TanhGaussianActor, squashed_log_prob

ACTION_BOUND = 0.999  # atanh(0.999) = 3.8


class GaussianBCPrior(nn.Module):
    """``log pi_BC(a | s)`` from a tanh-Gaussian MLP over the state keys ``obs_keys``.

    Args:
        observation_space: the learner's Dict observation space.
        action_dim: size of the action.
        obs_keys: keys it reads (``None``: all); image keys go through their own small CNN.
        hidden: MLP widths.
        min_std: floor of the pre-tanh standard deviation.
        seed: seeds the initialisation and the fit's minibatch sampling.
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_dim: int, obs_keys: Sequence[str] | None = None,
                 hidden: Sequence[int] = (256, 256), min_std: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ObservationEncoder(observation_space, obs_keys)
            self.policy = TanhGaussianActor(self.encoder.feature_dim, action_dim, hidden, math.log(min_std), 2.0)
        self.keys = self.encoder.state_keys + self.encoder.image_keys
        self.seed = seed
        self.register_buffer("fitted", torch.tensor(False))
        self.requires_grad_(False)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def log_prob(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """``log pi_BC(actions | obs)``, shape ``(B,)``; differentiable in ``actions``."""
        mean, log_std = self.policy(self.encoder(obs))
        pre_tanh = torch.atanh(actions.clamp(-ACTION_BOUND, ACTION_BOUND))
        return squashed_log_prob((pre_tanh - mean) * torch.exp(-log_std), log_std, pre_tanh)

    def mean_action(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The prior's most likely action ``tanh(mu(s))``, shape ``(B, A)``: IBRL's proposal (``bc_proposal``)."""
        return self.policy.deterministic(self.encoder(obs))

    def fit(self, obs: Mapping[str, np.ndarray], actions: np.ndarray, updates: int = 2000,
            batch_size: int = 256, lr: float = 1e-3) -> float:
        """Maximum likelihood on ``(obs, actions)`` pairs; returns the final mean negative log-likelihood."""
        n = len(actions)
        if n == 0:
            raise HilrlError("the BC prior (SACConfig.variants.kl_coef > 0 or bc_proposal) is fitted on the demo "
                             "buffer, which is empty; record or load demos (demos.episodes > 0 or demos.path), or set "
                             "variants.kl_coef to 0 and variants.bc_proposal to false")
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise HilrlError(f"BC prior: the samples lack observation keys {missing}")
        device = self.fitted.device
        self.encoder.fit_state_normalizer({k: obs[k] for k in self.encoder.state_keys})
        inputs = {k: torch.as_tensor(np.asarray(obs[k]), device=device) for k in self.keys}
        targets = torch.as_tensor(np.asarray(actions, np.float32), device=device)
        params = list(self.parameters())
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=lr)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        loss = torch.zeros(())
        for _ in range(updates):
            rows = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(device)
            loss = -self.log_prob({k: v[rows] for k, v in inputs.items()}, targets[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.requires_grad_(False)
        self.fitted.fill_(True)
        return float(loss.detach())
