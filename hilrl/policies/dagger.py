"""DAgger and HG-DAgger: behaviour cloning on a dataset that grows with expert labels.

* DAgger (Ross et al.): the learner acts; every state it visits is labelled
  with the expert's action and added to the dataset.
* HG-DAgger (Kelly et al.): a human-gated expert takes over when the learner
  strays (``intervention.source: distance``); only the intervention segments
  (state, expert action) are added.

Both retrain the same :class:`~hilrl.policies.bc.BC` network after every
``round_steps`` env steps, for ``updates_per_round`` gradient steps on everything
aggregated so far (demos included).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.errors import HilrlError
from hilrl.policies.bc import BC, flatten_state
from hilrl.policies.configs import DAggerConfig


class DAgger(BC):
    """A BC policy with an aggregated dataset (see the module docstring)."""

    algo_name = "dagger"

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, config: DAggerConfig,
                 seed: int = 0):
        super().__init__(observation_space, action_space, config, seed=seed)
        self._agg_inputs: list[np.ndarray] = []
        self._agg_targets: list[np.ndarray] = []

    @property
    def num_samples(self) -> int:
        return sum(len(x) for x in self._agg_inputs)

    def aggregate(self, obs: dict[str, np.ndarray], expert_actions: np.ndarray) -> None:
        """Add labelled states: ``obs`` as a batch ``{key: (N, ...)}`` with ``expert_actions (N, A)``."""
        if len(expert_actions):
            self._agg_inputs.append(flatten_state(obs, self.keys))
            self._agg_targets.append(np.asarray(expert_actions, np.float32))

    def update(self, replay: Any) -> dict[str, float]:
        """The algorithm protocol's update, once per round: the first call aggregates the demo buffer of
        ``replay`` (the demos); every call retrains on everything aggregated (:meth:`refit`)."""
        if not self._agg_inputs:
            n = len(replay.demo)
            if n == 0:
                raise HilrlError("DAgger starts from behaviour cloning: set demos.episodes > 0 or demos.path")
            self.aggregate({k: v[:n] for k, v in replay.demo.obs.items()}, replay.demo.actions[:n])
        return self.refit()

    def refit(self) -> dict[str, float]:
        """Retrain on everything aggregated so far; returns the last step's metrics."""
        self.set_samples(np.concatenate(self._agg_inputs), np.concatenate(self._agg_targets))
        metrics: dict[str, float] = {}
        for _ in range(self.config.updates_per_round):
            metrics = self.train_step()
        return metrics
