"""Acting with a :class:`~hilrl.policies.sac.agent.SAC` learner, here or in another process.

:func:`act` is what a rollout calls: the actor's squashed Gaussian (its mean when deterministic) on the
encoder's features, and, with IBRL's proposals (``variants.bc_proposal``, Hu et al. 2023, arXiv:2311.02198),
the BC prior's mean action wherever the critic ensemble values it more. :func:`policy_weights` is everything
:func:`act` reads, as flat numpy arrays an actor process loads with :func:`load_policy_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from hilrl.errors import HilrlError

# The learner (hilrl.policies.sac.agent.SAC), typed loosely so that this module need not import it.
SAC = Any

__all__ = ["act", "acting_modules", "load_policy_weights", "policy_weights", "q_value"]


@torch.no_grad()
def act(sac: SAC, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
    """Actions for a batch of observations ``{key: (B, ...)}``, or one observation (no leading axis)."""
    missing = [k for k in sac.keys if k not in obs]
    if missing:
        raise HilrlError(f"observation lacks keys {missing} the policy was built with (it uses {sac.keys})")
    first = sac.keys[0]
    single = np.ndim(obs[first]) == len(sac.observation_space[first].shape)
    tensors = {k: torch.as_tensor(np.asarray(obs[k])[None] if single else np.asarray(obs[k]), device=sac.device)
               for k in sac.keys}
    features = sac.encoder(tensors)
    if deterministic:
        actions = sac.actor.deterministic(features)
    else:
        noise = torch.randn(features.shape[0], sac.action_dim, generator=sac.generator, device=sac.device)
        actions = sac.actor.sample(features, noise)[0]
    if sac.config.variants.bc_proposal and sac.bc_prior_ready:
        proposal = sac.bc_prior.mean_action(tensors)
        critic = sac.critic["q"]  # eager: a compiled critic would recompile for each acting batch size
        q_actor, q_proposal = critic(features, actions).mean(dim=0), critic(features, proposal).mean(dim=0)
        actions = torch.where((q_proposal > q_actor).unsqueeze(-1), proposal, actions)
    actions = actions.cpu().numpy()
    return actions[0] if single else actions


@torch.no_grad()
def q_value(sac: SAC, obs: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
    """The critic ensemble's mean Q(s, a) for a batch of observations ``{key: (B, ...)}`` and actions ``(B, A)``."""
    tensors = {k: torch.as_tensor(np.asarray(obs[k]), device=sac.device) for k in sac.keys}
    action = torch.as_tensor(np.asarray(actions, np.float32), device=sac.device)
    return sac.critic["q"](sac.encoder(tensors), action).mean(dim=0).cpu().numpy()


def acting_modules(sac: SAC) -> dict[str, nn.Module]:
    """What :func:`act` reads: the observation encoder and the actor; with ``bc_proposal`` also the BC prior and
    the critic ensemble that picks between the two actions (IBRL)."""
    modules: dict[str, nn.Module] = {"encoder": sac.encoder, "actor": sac.actor}
    if sac.config.variants.bc_proposal:
        modules.update(bc_prior=sac.bc_prior, q=sac.critic["q"])
    return modules


def policy_weights(sac: SAC) -> dict[str, np.ndarray]:
    """Everything :func:`act` needs, as flat numpy arrays named ``module.parameter`` (sent to actors)."""
    return {f"{part}.{key}": value.detach().cpu().contiguous().numpy().copy()
            for part, module in acting_modules(sac).items() for key, value in module.state_dict().items()}


def load_policy_weights(sac: SAC, weights: Mapping[str, np.ndarray]) -> None:
    """Copy :func:`policy_weights` of a learner built with the same config into ``sac``."""
    modules = acting_modules(sac)
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}
    for name, value in weights.items():
        part, _, key = name.partition(".")
        if part not in parts:
            raise HilrlError(f"policy weights entry {name!r}: expected names starting with "
                             f"{', '.join(p + '.' for p in parts)}; run actor and learner with the same config")
        parts[part][key] = torch.from_numpy(np.array(value))
    try:
        for part, module in modules.items():
            module.load_state_dict(parts[part])
    except RuntimeError as exc:
        raise HilrlError(f"the learner's weights do not fit this actor's network ({exc}); run actor and learner "
                         "with the same config") from None
    if sac.bc_prior is not None and sac.config.variants.bc_proposal:
        sac.bc_prior_ready = sac.bc_prior.is_fitted
