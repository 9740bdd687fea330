"""The RLPD update of :class:`~hilrl.policies.sac.agent.SAC` in eager PyTorch: the readable reference.

Read :func:`rlpd_update` top to bottom (as CleanRL's ``sac_continuous_action.py``); every speed path of
:mod:`hilrl.policies.sac.fast` computes the same thing. One update on a batch of ``utd * batch_size``
transitions:

1. ``utd`` critic steps, one per consecutive minibatch slice. The target is
   ``r + gamma * (1 - terminated) * (min over 2 random target members of Q'(s', a') - reg(s', a'))``
   with ``a' ~ pi(s')``; ``reg`` is ``alpha * log pi`` (SAC), omitted when
   ``backup_entropy=False`` (RLIF), or ``kl_coef * (log pi - log pi_BC)`` with a
   BC prior (Demonstration-Regularized RL). With ``variants.bc_proposal`` the BC prior's action competes
   in the bootstrap (IBRL); with ``variants.target_bounds`` the target is clipped to the return's bounds.
   Truncated steps bootstrap. After each critic step the target networks move by Polyak averaging (``tau``).
2. One actor step on the last slice (every row with ``actor_batch="whole"``, SERL): minimise
   ``reg(s, a) - mean_i Q_i(s, a)``, plus, with ``variants.bc_coef > 0``,
   ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2`` on that slice's demo rows (TD3+BC's
   behaviour-cloning term with its Q-scale normalisation; not part of RLPD).
3. One temperature step: minimise ``alpha * (-log pi - target_entropy)``.

Image observations go through an encoder owned by the critic (critic gradients train it); the actor reads
its features detached, as in DrQ/SERL (on the last slice, the features the last critic step encoded). ``s'`` goes
through the online encoder (for ``a'``) and the target encoder together (:func:`~hilrl.policies.encoders.encode_many`:
one pooling product per cached feature map for both). Reference semantics: RLPD (Ball et al. 2023, "Efficient Online
Reinforcement Learning with Offline Data", ikostrikov/rlpd, ``rlpd/agents/sac/sac_learner.py``) and HIL-SERL
(Luo et al. 2024, arXiv:2410.21845, rail-berkeley/hil-serl @ 5d02aed).

All randomness comes in ``noise`` (:func:`draw_noise`), so the update is a function of the learner's state,
the batch and the noise: the property the CUDA graph replays and the C++ update is tested against. Metrics
stay tensors (no ``.item()`` per update).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hilrl.policies.encoders import encode_many
from hilrl.policies.sac import fast

TensorTree = dict[str, Any]
# The learner (hilrl.policies.sac.agent.SAC), typed loosely so that this module need not import it (the agent
# imports this one). What the update reads of it: config, device, generator, action_dim, encoder, actor,
# critic_q, target, target_q, critic_params, actor_params, polyak_pairs, the three optimisers,
# log_temperature, temperature, target_entropy, encoder_trains, use_kl, bc_policy, bc_prior.
SAC = Any

__all__ = ["critic_target", "draw_noise", "next_actions", "regulariser", "rlpd_update"]


def draw_noise(sac: SAC, batch_size: int) -> TensorTree:
    """All randomness one update uses, from the learner's generator.

    ``next_eps (utd*B, A)`` and ``actor_eps (B, A)`` (``(utd*B, A)`` with ``actor_batch="whole"``) are policy
    noise, ``members (utd, K)`` the target members of each critic step, ``obs_shift``/``next_shift`` the image
    shifts per key.
    """
    cfg, g, dev = sac.config, sac.generator, sac.device
    total = batch_size * cfg.utd
    noise: TensorTree = {
        "next_eps": torch.randn(total, sac.action_dim, generator=g, device=dev),
        "actor_eps": torch.randn(total if cfg.actor_batch == "whole" else batch_size, sac.action_dim,
                                 generator=g, device=dev),
        "members": torch.rand(cfg.utd, cfg.num_critics, generator=g, device=dev)
        .argsort(dim=1)[:, : cfg.num_min_critics],
    }
    if sac.encoder.has_images and cfg.images.augment:
        high = 2 * sac.encoder.image_pad + 1  # pixels (DrQ CNN) or feature-map cells (pretrained backbone)
        for name in ("obs_shift", "next_shift"):
            noise[name] = {k: torch.randint(0, high, (total, 2), generator=g, device=dev)
                           for k in sac.encoder.image_keys}
    return noise


def regulariser(sac: SAC, obs: Mapping[str, torch.Tensor], actions: torch.Tensor, log_prob: torch.Tensor,
                temperature: torch.Tensor) -> torch.Tensor:
    """``alpha * log pi`` or, with a BC prior (``variants.kl_coef > 0``), ``kl_coef * (log pi - log pi_BC)``."""
    if sac.use_kl:
        assert sac.bc_policy is not None
        prior = sac.bc_policy.log_prob(obs, actions.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
        return sac.config.variants.kl_coef * (log_prob - prior)
    return temperature * log_prob


@torch.no_grad()
def next_actions(sac: SAC, next_obs: TensorTree, eps: torch.Tensor, shifts: TensorTree | None,
                 temperature: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``a' ~ pi(s')`` from the online actor and encoder (``features``: ``next_obs`` already encoded by it), and
    the regulariser at ``(s', a')``."""
    features = sac.encoder(next_obs, shifts) if features is None else features
    actions, log_prob = sac.actor.sample(features, eps)
    return actions, regulariser(sac, next_obs, actions, log_prob, temperature)


@torch.no_grad()
def critic_target(sac: SAC, rewards: torch.Tensor, mask: torch.Tensor, next_obs: TensorTree,
                  next_actions: torch.Tensor, next_reg: torch.Tensor, members: torch.Tensor | None,
                  shifts: TensorTree | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
    """``r + gamma * mask * (min_{i in members} Q'_i(s', a') - next_reg)`` (``features``: ``next_obs`` already
    encoded by the target encoder).

    ``next_reg`` is subtracted only with ``backup_entropy``; ``mask`` is ``1 - terminated``. With
    ``variants.bc_proposal`` the BC prior's action at ``s'`` is bootstrapped from where it is worth more (IBRL);
    with ``variants.target_bounds`` the target is clipped to them.
    """
    cfg = sac.config
    features = sac.target["encoder"](next_obs, shifts) if features is None else features
    if cfg.num_min_critics == cfg.num_critics:
        members = None  # the min over every member, whatever their order: no copy of the chosen weights
    next_q = sac.target_q(features, next_actions, members).min(dim=0).values
    if cfg.backup_entropy:
        next_q = next_q - next_reg
    if cfg.variants.bc_proposal:
        assert sac.bc_prior is not None
        proposal = sac.bc_prior.mean_action(next_obs)
        next_q = torch.maximum(next_q, sac.target_q(features, proposal, members).min(dim=0).values)
    target = rewards + cfg.gamma * mask * next_q
    if cfg.variants.target_bounds is not None:
        target = target.clamp(*cfg.variants.target_bounds)
    return target


def _step(sac: SAC, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    # `inputs=` keeps autograd from computing gradients of anything else (e.g. the critic in the actor loss).
    loss.backward(inputs=params)
    if sac.config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, sac.config.max_grad_norm, foreach=True)
    optimizer.step()


def _slice(tree: Any, part: slice) -> Any:
    if isinstance(tree, Mapping):
        return {k: _slice(v, part) for k, v in tree.items()}
    return tree[part]


def rlpd_update(sac: SAC, batch: TensorTree, noise: TensorTree) -> TensorTree:
    """One full RLPD update on ``batch`` (``utd`` slices) with the given noise; returns detached metrics."""
    cfg = sac.config
    batch_size = batch["actions"].shape[0] // cfg.utd
    mask = 1.0 - batch["terminated"]  # truncated steps bootstrap: only termination zeroes the future
    obs_shift, next_shift = noise.get("obs_shift"), noise.get("next_shift")
    temperature = sac.temperature
    if obs_shift is not None and sac.encoder.frame_encoder is not None and batch["obs"][sac.encoder.image_keys[0]] \
            .dtype != torch.uint8:
        # cached feature maps (a frozen backbone): shift them once here, the same shifts every encoding below
        # would apply (obs: critic and actor steps; next_obs: next actions and target)
        # (into memory the encoder keeps for the two: the previous update's backward pass is done by now)
        shift = fast.shift_feature_maps_to_float  # fp16 -> float32 and the shift in one C++ pass where it builds
        batch = {**batch, "obs": sac.encoder.shift_feature_maps(batch["obs"], obs_shift, "obs", shift),
                 "next_obs": sac.encoder.shift_feature_maps(batch["next_obs"], next_shift, "next_obs", shift)}
        obs_shift = next_shift = None

    # ---- 1. utd critic steps, each on its own slice, each followed by Polyak averaging
    if not sac.encoder_trains:
        # The actor and encoder do not change during the critic steps: sample every a' at once.
        all_next_actions, all_next_reg = next_actions(sac, batch["next_obs"], noise["next_eps"], next_shift,
                                                      temperature)
    for k in range(cfg.utd):
        part = slice(k * batch_size, (k + 1) * batch_size)
        obs, next_obs = _slice(batch["obs"], part), _slice(batch["next_obs"], part)
        part_next_shift = None if next_shift is None else _slice(next_shift, part)
        next_features = target_features = None
        if sac.encoder_trains:
            # s' through the online encoder (for a') and the target encoder, in one pass over its images
            with torch.no_grad():
                next_features, target_features = encode_many([sac.encoder, sac.target["encoder"]], next_obs,
                                                             part_next_shift)
            next_a, next_reg = next_actions(sac, next_obs, noise["next_eps"][part], part_next_shift, temperature,
                                            next_features)
        else:
            next_a, next_reg = all_next_actions[part], all_next_reg[part]
        target_q = critic_target(sac, batch["rewards"][part], mask[part], next_obs, next_a, next_reg,
                                 noise["members"][k], part_next_shift, target_features)
        with torch.set_grad_enabled(sac.encoder_trains):
            features = sac.encoder(obs, None if obs_shift is None else _slice(obs_shift, part))
        q = sac.critic_q(features, batch["actions"][part])
        critic_loss = (q - target_q).pow(2).mean()
        _step(sac, sac.critic_optimizer, critic_loss, sac.critic_params)
        with torch.no_grad():
            torch._foreach_lerp_(*sac.polyak_pairs, cfg.tau)

    # ---- 2. the actor step on the last slice (RLPD) or on every row (SERL's update_high_utd); features
    # detached from the encoder. On the last slice they are the critic step's own, encoded once: HIL-SERL
    # computes its actor loss with the encoder the last critic loss saw (rail-berkeley/hil-serl, SACAgent.update
    # through JaxRLTrainState.apply_loss_fns: every loss from the same parameters), so an image batch is not
    # encoded again (without images the encoder has no parameters and nothing changes).
    critic_part = part
    if cfg.actor_batch == "whole":
        part = slice(None)
        obs = batch["obs"]
        with torch.no_grad():
            features = sac.encoder(obs, None if obs_shift is None else _slice(obs_shift, part))
    else:
        features = features.detach()
    actions, log_prob = sac.actor.sample(features, noise["actor_eps"])
    # param_grads=False: the actor loss needs gradients only through the actions, not the critic's weights.
    q_pi = sac.critic_q(features, actions, param_grads=False).mean(dim=0)
    actor_loss = (regulariser(sac, obs, actions, log_prob, temperature) - q_pi).mean()
    bc_loss = torch.zeros((), device=sac.device)
    bc_coef = cfg.variants.bc_coef
    if bc_coef > 0 and "demo_mask" in batch:  # TD3+BC on the demo rows (Fujimoto & Gu 2021)
        demo_mask = batch["demo_mask"][part]
        error = (sac.actor.deterministic(features) - batch["actions"][part]).pow(2).sum(-1)
        bc_loss = (error * demo_mask).sum() / demo_mask.sum().clamp(min=1.0)
        actor_loss = actor_loss + bc_coef * q_pi.detach().abs().mean() * bc_loss
    _step(sac, sac.actor_optimizer, actor_loss, sac.actor_params)

    # ---- 3. the temperature step
    entropy = -log_prob.detach().mean()
    temperature_loss = sac.log_temperature.detach().exp() * (entropy - sac.target_entropy)
    if cfg.learn_temperature and not sac.use_kl:
        # d/d(log alpha) of alpha * (entropy - target) is the loss itself: set it, no autograd pass
        sac.log_temperature.grad = temperature_loss.clone()
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([sac.log_temperature], cfg.max_grad_norm, foreach=True)
        sac.temperature_optimizer.step()

    metrics = {
        "critic_loss": critic_loss.detach(), "q": q.detach().mean(), "target_q": target_q.mean(),
        "actor_loss": actor_loss.detach(), "entropy": entropy, "temperature": temperature,
        "temperature_loss": temperature_loss.detach(), "bc_loss": bc_loss.detach(),
    }
    if "demo_mask" in batch:  # "q" mixes demo and online rows: their values apart (the last critic slice)
        demo_rows, q_rows = batch["demo_mask"][critic_part], q.detach().mean(dim=0)
        online_rows = 1.0 - demo_rows
        metrics["q_demo"] = (q_rows * demo_rows).sum() / demo_rows.sum().clamp(min=1.0)
        metrics["q_online"] = (q_rows * online_rows).sum() / online_rows.sum().clamp(min=1.0)
    return metrics
