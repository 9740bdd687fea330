"""Behaviour cloning (robomimic's plain BC): a deterministic MLP trained with an L2 loss on demo actions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hilrl.data.episode import Episode
from hilrl.errors import HilrlError
from hilrl.policies.configs import BCConfig
from hilrl.policies.encoders import split_observation_keys


def flatten_state(obs: dict[str, np.ndarray], keys: Sequence[str]) -> np.ndarray:
    """Concatenate state keys along the last axis (works for one step or a batch)."""
    return np.concatenate([np.asarray(obs[k], dtype=np.float32) for k in keys], axis=-1)


class BC:
    """Behaviour cloning policy.

    Inputs are the state keys, standardised with the demo mean and std (stored
    with the weights); outputs are squashed by ``tanh`` into the action box.
    """

    algo_name = "bc"

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, config: BCConfig, seed: int = 0):
        self.config = config
        # BC reads state keys only; image keys in obs_keys are left to the SAC encoder
        self.keys = split_observation_keys(observation_space, config.obs_keys)[0]
        obs_dim = sum(int(np.prod(observation_space[k].shape)) for k in self.keys)
        act_dim = int(np.prod(action_space.shape))
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = obs_dim
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers += [nn.Linear(width, act_dim), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.register_normalizer(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.steps = 0
        self._rng = np.random.default_rng(seed)
        self._inputs: torch.Tensor | None = None
        self._targets: torch.Tensor | None = None

    def register_normalizer(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.obs_mean = torch.as_tensor(mean, dtype=torch.float32)
        self.obs_std = torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32)

    def set_dataset(self, episodes: Sequence[Episode]) -> int:
        """Use these episodes for training; fits the input normaliser. Returns the sample count."""
        if not episodes:
            raise HilrlError("BC needs at least one demo episode")
        inputs = np.concatenate([flatten_state(ep.obs, self.keys) for ep in episodes])
        targets = np.concatenate([ep.actions for ep in episodes])
        return self.set_samples(inputs, targets)

    def set_samples(self, inputs: np.ndarray, targets: np.ndarray) -> int:
        """Train on flattened state ``inputs (N, D)`` -> ``targets (N, A)``; fits the input normaliser."""
        inputs = np.asarray(inputs, np.float32)
        targets = np.asarray(targets, np.float32)
        self.register_normalizer(inputs.mean(0), inputs.std(0))
        self._inputs = (torch.as_tensor(inputs) - self.obs_mean) / self.obs_std
        self._targets = torch.as_tensor(np.clip(targets, -1.0, 1.0))
        return len(inputs)

    def update(self, replay: Any) -> dict[str, float]:
        """The algorithm protocol's update: one gradient step on the demo buffer of ``replay``.

        The first call (and any call after the demo buffer grew) takes every demo transition as the
        dataset and fits the input normaliser on it (:meth:`set_samples`).
        """
        demo = replay.demo
        if self._inputs is None or len(self._inputs) != len(demo):
            if len(demo) == 0:
                raise HilrlError("BC needs at least one demo transition; set demos.episodes > 0 or demos.path")
            n = len(demo)
            self.set_samples(flatten_state({k: v[:n] for k, v in demo.obs.items()}, self.keys), demo.actions[:n])
        return self.train_step()

    def train_step(self) -> dict[str, float]:
        """One gradient step on a uniformly sampled minibatch."""
        if self._inputs is None or self._targets is None:
            raise RuntimeError("call set_dataset() before train_step()")
        idx = torch.as_tensor(self._rng.integers(0, len(self._inputs), self.config.batch_size))
        loss = torch.mean((self.net(self._inputs[idx]) - self._targets[idx]) ** 2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        return {"loss": loss.item()}

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> np.ndarray:
        """Action for one observation (or a batch: leading axis kept)."""
        x = (torch.as_tensor(flatten_state(obs, self.keys)) - self.obs_mean) / self.obs_std
        return self.net(x).numpy()

    def policy_weights(self) -> dict[str, np.ndarray]:
        """The network and its input normaliser as numpy arrays (what :meth:`act` needs)."""
        weights = {f"net.{k}": v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}
        weights.update(obs_mean=self.obs_mean.numpy().copy(), obs_std=self.obs_std.numpy().copy())
        return weights

    def load_policy_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in weights.items()
                                  if k.startswith("net.")})
        self.register_normalizer(np.asarray(weights["obs_mean"]), np.asarray(weights["obs_std"]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "steps": self.steps,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.register_normalizer(state["obs_mean"].numpy(), state["obs_std"].numpy())
        self.steps = int(state["steps"])
        self._rng.bit_generator.state = state["rng"]
