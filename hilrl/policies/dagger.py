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

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from hilrl.policies.bc import BC, BCConfig, flatten_state


@dataclass
class DAggerConfig(BCConfig):
    """:class:`BCConfig` plus the aggregation schedule.

    Attributes:
        round_steps: env steps collected between two retrainings.
        updates_per_round: gradient steps after each round (and on the demos before the first).
        label: ``all`` (DAgger: every visited state) or ``interventions`` (HG-DAgger).
    """

    round_steps: int = 500
    updates_per_round: int = 500
    label: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label not in ("all", "interventions"):
            raise ValueError(f"DAggerConfig.label must be 'all' (DAgger) or 'interventions' (HG-DAgger), "
                             f"got {self.label!r}")
        if self.round_steps < 1 or self.updates_per_round < 1:
            raise ValueError("DAggerConfig: round_steps and updates_per_round must be >= 1")


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

    def refit(self) -> dict[str, float]:
        """Retrain on everything aggregated so far; returns the last step's metrics."""
        self.set_samples(np.concatenate(self._agg_inputs), np.concatenate(self._agg_targets))
        metrics: dict[str, float] = {}
        for _ in range(self.config.updates_per_round):
            metrics = self.train_step()
        return metrics
