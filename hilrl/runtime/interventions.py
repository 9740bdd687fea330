"""Build the interventionist an experiment config asks for: a simulated person or a real one on a device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.config import InterventionConfig
from hilrl.errors import HilrlError
from hilrl.feedback.experts import make_expert
from hilrl.feedback.interventions import (
    DistanceInterventionist,
    InterventionSource,
    RandomInterventionist,
    ValueInterventionist,
)
from hilrl.runtime.seeds import Seeds


def reference_q(checkpoint: str | Path, observation_space: gym.spaces.Dict | None = None) -> Any:
    """``Q_ref(obs, action)``: the mean of a trained SAC critic ensemble (RLIF's reference value).

    With ``observation_space`` (the training env's), a critic that reads keys the env does not observe
    is refused, naming them.
    """
    import torch

    from hilrl.runtime.evaluate import load_policy

    if not Path(checkpoint).exists():
        raise HilrlError(f"intervention.q_ref {str(checkpoint)!r} does not exist; train the reference critic first: "
                         f"python benchmarks/train_reference_critic.py --task TASK --out {checkpoint}")
    config, sac, _ = load_policy(checkpoint)
    if config.algo.name != "sac":
        raise HilrlError(f"{checkpoint}: q_ref must be a SAC run (got algo {config.algo.name!r})")
    missing = sorted(set(sac.keys) - set(observation_space.spaces)) if observation_space is not None else []
    if missing:
        hint = " (set env.relative_positions: true)" if {"tcp_to_object", "object_to_goal"} & set(missing) else ""
        raise HilrlError(f"intervention.q_ref {str(checkpoint)!r} reads observation keys {missing} this env does not "
                         f"have{hint}; the reference critic must see what the training env observes")

    @torch.no_grad()
    def q(obs: dict[str, np.ndarray], action: np.ndarray) -> float:
        tensors = {k: torch.as_tensor(np.asarray(obs[k])[None], device=sac.device) for k in sac.keys}
        features = sac.critic["encoder"](tensors)
        actions = torch.as_tensor(action, dtype=torch.float32, device=sac.device)[None]
        return float(sac.critic["q"](features, actions).mean())

    return q


def make_interventionist(config: InterventionConfig, env: gym.Env, task_id: str, seeds: Seeds,
                         device: Any = None) -> InterventionSource:
    """The configured source for ``env`` (``config.source`` must not be ``none``).

    A simulated person drives the task's scripted expert at ``expert_noise`` (seeded by ``seeds``);
    ``source: device`` reads ``device`` (an open teleop device) or opens ``config.device``. A missing
    ``q_ref`` run folder is built there first for ``task_id`` (:func:`hilrl.runtime.reference.ensure_reference_critic`).
    """
    if config.source == "device":
        from hilrl.feedback.teleop import DeviceInterventionist, make_device

        if device is not None:  # the caller's: it closes it
            return DeviceInterventionist(device, dead_zone=config.dead_zone)
        return DeviceInterventionist(make_device(config.device), dead_zone=config.dead_zone, owns_device=True)
    expert = make_expert(env, noise=config.expert_noise, seed=seeds.expert)
    if config.source == "value":
        from hilrl.runtime.reference import ensure_reference_critic

        q_ref = ensure_reference_critic(config.q_ref, task_id, config.q_ref_steps, seed=0)
        return ValueInterventionist(expert, reference_q(q_ref, env.observation_space), beta=config.beta,
                                    duration=config.duration or 4,
                                    p_low_value=config.p_intervene, seed=seeds.gate)
    if config.source == "distance":
        return DistanceInterventionist(expert, config.threshold, duration=config.duration or 1,
                                       p_intervene=config.p_intervene, seed=seeds.gate)
    if config.source == "random":
        return RandomInterventionist(expert, config.probability, duration=config.duration or 1, seed=seeds.gate)
    raise HilrlError(f"intervention.source {config.source!r}: nothing intervenes; the loop builds no wrapper for it")
