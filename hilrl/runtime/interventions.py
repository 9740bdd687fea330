"""Build the simulated interventionist an experiment config asks for."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hilrl.config import InterventionConfig
from hilrl.errors import HilrlError
from hilrl.feedback.intervention import (
    DistanceInterventionist,
    InterventionSource,
    RandomInterventionist,
    ValueInterventionist,
)


def reference_q(checkpoint: str) -> Any:
    """``Q_ref(obs, action)``: the mean of a trained SAC critic ensemble (RLIF's reference value)."""
    from pathlib import Path

    from hilrl.runtime.evaluate import load_policy

    if not Path(checkpoint).exists():
        raise HilrlError(f"intervention.q_ref {checkpoint!r} does not exist; train the reference critic first: "
                         f"python benchmarks/train_reference_critic.py --task TASK --out {checkpoint}")
    _, sac, _ = load_policy(checkpoint)
    if getattr(sac, "algo_name", "") != "sac":
        raise HilrlError(f"{checkpoint}: q_ref must be a SAC checkpoint (got {getattr(sac, 'algo_name', '?')})")

    @torch.no_grad()
    def q(obs: dict[str, np.ndarray], action: np.ndarray) -> float:
        tensors = {k: torch.as_tensor(np.asarray(obs[k])[None]) for k in sac.keys}
        features = sac.critic["encoder"](tensors)
        return float(sac.critic["q"](features, torch.as_tensor(action, dtype=torch.float32)[None]).mean())

    return q


def make_interventionist(config: InterventionConfig, expert: Any, seed: int) -> InterventionSource | None:
    """The configured source driving ``expert``, or ``None`` for ``source: none``."""
    if config.source == "none":
        return None
    if config.source == "value":
        if not config.q_ref:
            raise HilrlError("intervention.source 'value' needs intervention.q_ref: a SAC checkpoint trained on the "
                             "task's dense reward (see benchmarks/train_reference_critic.py)")
        return ValueInterventionist(expert, reference_q(config.q_ref), beta=config.beta,
                                    duration=config.duration or 4, p_low_value=config.p_intervene, seed=seed)
    if config.source == "distance":
        return DistanceInterventionist(expert, config.threshold, duration=config.duration or 1,
                                       p_intervene=config.p_intervene, seed=seed)
    return RandomInterventionist(expert, config.probability, duration=config.duration or 1, seed=seed)
