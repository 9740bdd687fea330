"""Soft actor-critic in the RLPD form used by HIL-SERL and RLIF.

One update (``SAC.train_on_batch``) on a batch of ``utd * batch_size`` transitions:

1. ``utd`` critic steps, one per consecutive minibatch slice. The target is
   ``r + gamma * (1 - terminated) * (min over 2 random target members of Q'(s', a') - reg(s', a'))``
   with ``a' ~ pi(s')``; ``reg`` is ``alpha * log pi`` (SAC), omitted when
   ``backup_entropy=False`` (RLIF), or ``kl_coef * (log pi - log pi_BC)`` with a
   BC prior (Demonstration-Regularized RL). Truncated steps bootstrap. After each
   critic step the target networks move by Polyak averaging (``tau``).
2. One actor step on the last slice (every row with ``actor_batch="whole"``, SERL): minimise
   ``reg(s, a) - mean_i Q_i(s, a)``, plus, with ``bc_coef > 0``,
   ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2`` on that slice's demo rows (TD3+BC's
   behaviour-cloning term with its Q-scale normalisation; not part of RLPD).
3. One temperature step: minimise ``alpha * (-log pi - target_entropy)``.

Image observations go through an encoder owned by the critic (critic gradients
train it); the actor reads its features detached, as in DrQ/SERL.
Reference semantics: RLPD (Ball et al. 2023, "Efficient Online Reinforcement Learning with Offline Data",
ikostrikov/rlpd) and HIL-SERL (Luo et al. 2024, arXiv:2410.21845, rail-berkeley/hil-serl @ 5d02aed).

The hot path keeps metrics as tensors (no ``.item()`` per update): convert with
``{k: float(v) for k, v in metrics.items()}`` only when logging. On a CPU, ``SACConfig.cpu_fused_update``
computes the same update as one C++ call (:mod:`hilrl.policies.fused_update`); ``_update_tensors`` stays the
reference.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hilrl.data.buffers import Batch, Replay, ReplayBuffer, demo_rows, mixed_sample
from hilrl.errors import HilrlError
from hilrl.policies.bc_prior import GaussianBCPrior
from hilrl.policies.configs import SACConfig
from hilrl.policies.encoders import ObservationEncoder
from hilrl.policies.fused_update import FusedCPUUpdate, unsupported
from hilrl.policies.kernels import has_cxx_compiler
from hilrl.policies.networks import CriticEnsemble, TanhGaussianActor, xavier_init_

TensorTree = dict[str, Any]


class ActionLogProb(Protocol):
    """A behaviour prior for KL regularisation: ``log pi_BC(actions | obs)`` with shape ``(B,)``."""

    def log_prob(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor: ...


def batch_to_torch(batch: Batch, device: torch.device | str) -> TensorTree:
    """A numpy batch (see :mod:`hilrl.data.buffers`) as tensors on ``device``.

    Floats become float32, ``terminated``/``truncated`` float32 masks, images stay uint8
    (a quarter of the bytes to move). On CUDA the copies go through pinned memory and do not block.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def move(array: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if cuda:
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        return tensor if dtype is None else tensor.to(dtype)

    out: TensorTree = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = {k: move(v, None if v.dtype == np.uint8 else torch.float32) for k, v in value.items()}
        elif key in ("terminated", "truncated", "rewards", "actions"):
            out[key] = move(value, torch.float32)
        else:
            out[key] = move(value)
    return out


def _slice(tree: Any, part: slice) -> Any:
    if isinstance(tree, Mapping):
        return {k: _slice(v, part) for k, v in tree.items()}
    return tree[part]


class SAC:
    """RLPD-style SAC learner for dict observations and a ``[-1, 1]`` Box action space.

    Args:
        observation_space: ``gymnasium.spaces.Dict`` of float state vectors and/or uint8 ``(H, W, 3)`` images.
        action_space: ``Box`` with bounds ``[-1, 1]`` (rescale the env's actions with a wrapper first).
        config: the learner's settings.
        device: torch device for networks and updates; ``None`` takes ``config.device`` (:func:`resolve_device`).
        seed: seeds the network initialisation, the learner's torch generator and its numpy sampler.
        bc_policy: behaviour prior for KL regularisation (used when ``config.kl_coef > 0``).
        cuda_graph: capture the whole update as a CUDA graph after three eager warm-up updates
            (CUDA only; removes Python and launch overhead); ``None`` takes ``config.cuda_graph``.
    """

    algo_name = "sac"

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box,
                 config: SACConfig | None = None, device: torch.device | str | None = None, seed: int = 0,
                 bc_policy: ActionLogProb | None = None, cuda_graph: bool | None = None):
        self.config = config = config if config is not None else SACConfig()
        self.device = resolve_device(config.device if device is None else device)
        cuda_graph = config.cuda_graph if cuda_graph is None else cuda_graph
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise HilrlError(f"SAC needs a 1-D Box action space, got {action_space}")
        if not (np.allclose(action_space.low, -1.0) and np.allclose(action_space.high, 1.0)):
            raise HilrlError(f"SAC acts in [-1, 1] but the action space is [{action_space.low}, {action_space.high}]; "
                             "wrap the env with gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)")
        if cuda_graph and self.device.type != "cuda":
            raise HilrlError(f"cuda_graph=True needs a CUDA device, got {self.device}")
        if cuda_graph and config.compile_critic:
            raise HilrlError("cuda_graph=True and SACConfig.compile_critic=True do not combine; choose one "
                             "(on CUDA the graph removes more overhead)")
        if config.fused_layer_norm and config.compile_critic:
            raise HilrlError("SACConfig.fused_layer_norm=True and compile_critic=True do not combine; choose one "
                             "(on CPU the fused kernel is the faster, benchmarks/learner_throughput.py --levers)")
        if config.compile_critic and self.device.type == "cpu" and not has_cxx_compiler():
            raise HilrlError("SACConfig.compile_critic=True needs a C++ compiler on CPU (torch.compile builds "
                             "C++ kernels); install g++ (or set CXX) or set compile_critic=False")
        self.observation_space, self.action_space = observation_space, action_space
        self.action_dim = int(action_space.shape[0])
        self.target_entropy = (-self.action_dim / 2.0 if config.target_entropy is None
                               else float(config.target_entropy))
        self.use_kl = config.kl_coef > 0
        # Our own prior (fitted on the demo buffer by the first train_step) for IBRL's proposals, and for
        # the KL term when no bc_policy is given.
        self.bc_prior: GaussianBCPrior | None = None
        if config.bc_proposal or (self.use_kl and bc_policy is None):
            self.bc_prior = GaussianBCPrior(observation_space, self.action_dim, config.obs_keys, config.hidden,
                                            config.bc_prior_min_std, seed=seed).to(self.device)
        if self.use_kl and bc_policy is None:
            bc_policy = self.bc_prior
        self.bc_policy = bc_policy

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = ObservationEncoder(observation_space, config.obs_keys, config.image_latent_dim,
                                         config.image_channels, config.image_strides, config.image_pad)
            critic_in = encoder.feature_dim + self.action_dim
            self.critic = nn.ModuleDict({
                "encoder": encoder,
                "q": CriticEnsemble(critic_in, config.hidden, config.num_critics, config.critic_layer_norm,
                                    fused=config.fused_layer_norm and self.device.type == "cpu"),
            }).to(self.device)
            self.actor = TanhGaussianActor(encoder.feature_dim, self.action_dim, config.hidden,
                                           config.log_std_min, config.log_std_max,
                                           config.actor_layer_norm).to(self.device)
            if config.init == "xavier":
                xavier_init_(self.critic["q"])
                xavier_init_(self.actor)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.encoder: ObservationEncoder = encoder
        self.keys = encoder.state_keys + encoder.image_keys
        if config.freeze_encoder:
            encoder.requires_grad_(False)
        self.encoder_trains = any(p.requires_grad for p in encoder.parameters())
        if config.cpu_fused_update:
            reason = unsupported(config)
            if self.device.type != "cpu":
                reason = f"device {self.device} (it is a CPU update)"
            elif encoder.has_images:
                reason = "image observations (the image encoder is not written out)"
            if reason is not None:
                raise HilrlError(f"SACConfig.cpu_fused_update=True does not compute the update with {reason}; set "
                                 "cpu_fused_update=False (the eager update does)")
        self.log_temperature = torch.tensor(float(np.log(config.init_temperature)), device=self.device,
                                            requires_grad=True)

        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        # Listed once: walking the module tree every critic step costs more than the Polyak update itself.
        self._polyak_pairs = (list(self.target.parameters()), list(self.critic.parameters()))
        # The ensembles as the update calls them: compiled wrappers share the modules' parameters.
        self._critic_q: Callable[..., torch.Tensor] = self.critic["q"]
        self._target_q: Callable[..., torch.Tensor] = self.target["q"]
        if config.compile_critic:
            self._critic_q = torch.compile(self.critic["q"], dynamic=False)
            self._target_q = torch.compile(self.target["q"], dynamic=False)
        self.actor_params = list(self.actor.parameters())
        self.critic_optimizer = self._adam(self.critic_params, config.critic_lr, cuda_graph)
        self.actor_optimizer = self._adam(self.actor_params, config.actor_lr, cuda_graph)
        self.temperature_optimizer = self._adam([self.log_temperature], config.temperature_lr, cuda_graph)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.num_updates = 0
        self.critic_updates = 0
        self.actor_updates = 0

        self._bc_prior_ready = False  # a Python flag: reading the prior's tensor flag would sync a GPU per update
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_warmups = 0
        self._static: tuple[TensorTree, TensorTree, TensorTree] | None = None
        self._fused_update = FusedCPUUpdate(self) if config.cpu_fused_update else None

    def _adam(self, params: list[torch.Tensor], lr: float, capturable: bool) -> torch.optim.Adam:
        if self.device.type == "cuda":
            return torch.optim.Adam(params, lr=lr, capturable=capturable, foreach=True)
        # fused Adam runs one kernel for all parameters on CPU, far cheaper than the per-tensor loop.
        return torch.optim.Adam(params, lr=lr, fused=True)

    # ---- acting ----------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Actions for a batch of observations ``{key: (B, ...)}``, or one observation (no leading axis)."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise HilrlError(f"observation lacks keys {missing} the policy was built with (it uses {self.keys})")
        first = self.keys[0]
        single = np.ndim(obs[first]) == len(self.observation_space[first].shape)
        tensors = {k: torch.as_tensor(np.asarray(obs[k])[None] if single else np.asarray(obs[k]),
                                      device=self.device) for k in self.keys}
        features = self.encoder(tensors)
        if deterministic:
            actions = self.actor.deterministic(features)
        else:
            noise = torch.randn(features.shape[0], self.action_dim, generator=self.generator, device=self.device)
            actions = self.actor.sample(features, noise)[0]
        if self.config.bc_proposal and self._bc_prior_ready:
            assert self.bc_prior is not None
            proposal = self.bc_prior.mean_action(tensors)
            critic = self.critic["q"]  # eager: a compiled critic would recompile for each acting batch size
            q_actor, q_proposal = critic(features, actions).mean(dim=0), critic(features, proposal).mean(dim=0)
            actions = torch.where((q_proposal > q_actor).unsqueeze(-1), proposal, actions)
        actions = actions.cpu().numpy()
        return actions[0] if single else actions

    @torch.no_grad()
    def q_value(self, obs: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """The critic ensemble's mean Q(s, a) for a batch of observations ``{key: (B, ...)}`` and actions ``(B, A)``
        (a diagnostic: :mod:`hilrl.runtime.diagnostics` sets it against Monte-Carlo returns)."""
        tensors = {k: torch.as_tensor(np.asarray(obs[k]), device=self.device) for k in self.keys}
        action = torch.as_tensor(np.asarray(actions, np.float32), device=self.device)
        return self.critic["q"](self.encoder(tensors), action).mean(dim=0).cpu().numpy()

    # ---- learning --------------------------------------------------------------------------

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.detach().exp()

    def draw_noise(self, batch_size: int) -> TensorTree:
        """All randomness one update uses, from the learner's generator.

        ``next_eps (utd*B, A)`` and ``actor_eps (B, A)`` (``(utd*B, A)`` with ``actor_batch="whole"``) are
        policy noise, ``members (utd, K)`` the target members of each critic step, ``obs_shift``/``next_shift`` the image shifts per key.
        """
        cfg, g, dev = self.config, self.generator, self.device
        total = batch_size * cfg.utd
        noise: TensorTree = {
            "next_eps": torch.randn(total, self.action_dim, generator=g, device=dev),
            "actor_eps": torch.randn(total if cfg.actor_batch == "whole" else batch_size, self.action_dim,
                                     generator=g, device=dev),
            "members": torch.rand(cfg.utd, cfg.num_critics, generator=g, device=dev)
            .argsort(dim=1)[:, : cfg.num_min_critics],
        }
        if self.encoder.has_images and cfg.augment:
            high = 2 * cfg.image_pad + 1
            for name in ("obs_shift", "next_shift"):
                noise[name] = {k: torch.randint(0, high, (total, 2), generator=g, device=dev)
                               for k in self.encoder.image_keys}
        return noise

    def _regulariser(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor,
                     log_prob: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """``alpha * log pi`` or, with a BC prior, ``kl_coef * (log pi - log pi_BC)``."""
        if self.use_kl:
            assert self.bc_policy is not None
            prior = self.bc_policy.log_prob(obs, actions.clamp(-1.0 + 1e-6, 1.0 - 1e-6))
            return self.config.kl_coef * (log_prob - prior)
        return temperature * log_prob

    @torch.no_grad()
    def next_actions(self, next_obs: TensorTree, eps: torch.Tensor, shifts: TensorTree | None,
                     temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a' ~ pi(s')`` from the online actor and encoder, and the regulariser at ``(s', a')``."""
        actions, log_prob = self.actor.sample(self.encoder(next_obs, shifts), eps)
        return actions, self._regulariser(next_obs, actions, log_prob, temperature)

    @torch.no_grad()
    def critic_target(self, rewards: torch.Tensor, mask: torch.Tensor, next_obs: TensorTree,
                      next_actions: torch.Tensor, next_reg: torch.Tensor, members: torch.Tensor,
                      shifts: TensorTree | None = None) -> torch.Tensor:
        """``r + gamma * mask * (min_{i in members} Q'_i(s', a') - next_reg)``.

        ``next_reg`` is subtracted only with ``backup_entropy``; ``mask`` is ``1 - terminated``. With
        ``bc_proposal`` the BC prior's action at ``s'`` is bootstrapped from where it is worth more (IBRL).
        """
        features = self.target["encoder"](next_obs, shifts)
        if self.config.num_min_critics == self.config.num_critics:
            members = None  # the min over every member, whatever their order: no copy of the chosen weights
        next_q = self._target_q(features, next_actions, members).min(dim=0).values
        if self.config.backup_entropy:
            next_q = next_q - next_reg
        if self.config.bc_proposal:
            assert self.bc_prior is not None
            proposal = self.bc_prior.mean_action(next_obs)
            next_q = torch.maximum(next_q, self._target_q(features, proposal, members).min(dim=0).values)
        return rewards + self.config.gamma * mask * next_q

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        # `inputs=` keeps autograd from computing gradients of anything else (e.g. the critic in the actor loss).
        loss.backward(inputs=params)
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm, foreach=True)
        optimizer.step()

    def _update_tensors(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        """One full RLPD update on ``batch`` (``utd`` slices) with the given noise; returns detached metrics."""
        cfg = self.config
        batch_size = batch["actions"].shape[0] // cfg.utd
        mask = 1.0 - batch["terminated"]  # truncated steps bootstrap: only termination zeroes the future
        obs_shift, next_shift = noise.get("obs_shift"), noise.get("next_shift")
        temperature = self.temperature
        if not self.encoder_trains:
            # The actor and encoder do not change during the critic steps: sample every a' at once.
            all_next_actions, all_next_reg = self.next_actions(batch["next_obs"], noise["next_eps"], next_shift,
                                                               temperature)
        for k in range(cfg.utd):
            part = slice(k * batch_size, (k + 1) * batch_size)
            obs, next_obs = _slice(batch["obs"], part), _slice(batch["next_obs"], part)
            part_next_shift = None if next_shift is None else _slice(next_shift, part)
            if self.encoder_trains:
                next_actions, next_reg = self.next_actions(next_obs, noise["next_eps"][part], part_next_shift,
                                                           temperature)
            else:
                next_actions, next_reg = all_next_actions[part], all_next_reg[part]
            target_q = self.critic_target(batch["rewards"][part], mask[part], next_obs, next_actions, next_reg,
                                          noise["members"][k], part_next_shift)
            with torch.set_grad_enabled(self.encoder_trains):
                features = self.encoder(obs, None if obs_shift is None else _slice(obs_shift, part))
            q = self._critic_q(features, batch["actions"][part])
            critic_loss = (q - target_q).pow(2).mean()
            self._step(self.critic_optimizer, critic_loss, self.critic_params)
            with torch.no_grad():
                torch._foreach_lerp_(*self._polyak_pairs, cfg.tau)

        # Actor and temperature on the last slice (RLPD) or on every row (SERL's update_high_utd); features
        # detached from the encoder.
        critic_part = part
        if cfg.actor_batch == "whole":
            part = slice(None)
            obs = batch["obs"]
        with torch.no_grad():
            features = self.encoder(obs, None if obs_shift is None else _slice(obs_shift, part))
        actions, log_prob = self.actor.sample(features, noise["actor_eps"])
        # param_grads=False: the actor loss needs gradients only through the actions, not the critic's weights.
        q_pi = self._critic_q(features, actions, param_grads=False).mean(dim=0)
        actor_loss = (self._regulariser(obs, actions, log_prob, temperature) - q_pi).mean()
        bc_loss = torch.zeros((), device=self.device)
        if cfg.bc_coef > 0 and "demo_mask" in batch:
            demo_mask = batch["demo_mask"][part]
            error = (self.actor.deterministic(features) - batch["actions"][part]).pow(2).sum(-1)
            bc_loss = (error * demo_mask).sum() / demo_mask.sum().clamp(min=1.0)
            actor_loss = actor_loss + cfg.bc_coef * q_pi.detach().abs().mean() * bc_loss
        self._step(self.actor_optimizer, actor_loss, self.actor_params)
        entropy = -log_prob.detach().mean()
        temperature_loss = self.log_temperature.detach().exp() * (entropy - self.target_entropy)
        if cfg.learn_temperature and not self.use_kl:
            # d/d(log alpha) of alpha * (entropy - target) is the loss itself: set it, no autograd pass
            self.log_temperature.grad = temperature_loss.clone()
            if self.config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([self.log_temperature], self.config.max_grad_norm, foreach=True)
            self.temperature_optimizer.step()
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

    def update(self, replay: Replay) -> dict[str, torch.Tensor]:
        """The algorithm protocol's update (:mod:`hilrl.policies.registry`): :meth:`train_step` on the replay's
        online and demo buffers, whose sampled ``rewards`` come from the run's reward source."""
        return self.train_step(replay.online, replay.demo)

    def train_on_batch(self, batch: TensorTree, noise: TensorTree | None = None) -> dict[str, torch.Tensor]:
        """One RLPD update: ``utd`` critic steps, one actor and one temperature step.

        ``batch`` is a tensor batch (:func:`batch_to_torch`) of ``utd * B`` transitions whose
        consecutive ``B``-row slices are the critic minibatches. ``noise`` (from :meth:`draw_noise`)
        is drawn from the learner's generator when not given. Returns 0-d tensors (no device sync).
        """
        total = batch["actions"].shape[0]
        if self.bc_prior is not None and not self._bc_prior_ready:
            raise HilrlError("SACConfig.kl_coef > 0 or bc_proposal: the BC prior is not fitted yet; call "
                             "fit_bc_prior(demo_buffer) first (train_step does it on its first call)")
        if total % self.config.utd:
            raise HilrlError(f"a batch of {total} transitions does not split into utd={self.config.utd} slices; "
                             f"pass utd * batch_size rows")
        batch_size = total // self.config.utd
        noise = self.draw_noise(batch_size) if noise is None else noise
        if self.cuda_graph:
            metrics = self._graphed_update(batch, noise)
        elif self._fused_update is not None:
            metrics = self._fused_update(batch, noise)
        else:
            metrics = self._update_tensors(batch, noise)
        self.num_updates += 1
        self.critic_updates += self.config.utd
        self.actor_updates += 1
        return metrics

    def train_step(self, online: ReplayBuffer, demo: ReplayBuffer | None = None,
                   relabel: Callable[[Batch], np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Sample ``utd`` symmetric minibatches (``demo_fraction`` from ``demo``), then :meth:`train_on_batch`.

        The batch's ``rewards`` are what the buffers' reward source gives (the env reward without one).
        ``relabel(batch) -> rewards``, for experiments on this learner alone, replaces them after sampling
        and sees the whole numpy batch (``demo_mask`` included); training loops set a reward source on
        the buffers instead (:class:`hilrl.data.buffers.Replay`).
        """
        cfg = self.config
        if cfg.normalize_obs and not self.encoder.is_normalizer_fitted:
            self.fit_normalizer([online] if demo is None else [online, demo])
        if self.bc_prior is not None and not self._bc_prior_ready:
            self.fit_bc_prior(demo)
        batch = mixed_sample(online, demo, cfg.batch_size, self.np_rng, cfg.demo_fraction, cfg.utd)
        if demo is not None and len(demo):  # (the TD3+BC term and the split Q metrics read it)
            batch["demo_mask"] = _demo_mask(len(online), 0 if demo is None else len(demo), cfg)
        if relabel is not None:
            batch["rewards"] = np.asarray(relabel(batch), np.float32).reshape(-1)
        return self.train_on_batch(batch_to_torch(batch, self.device))

    def fit_normalizer(self, buffers: list[ReplayBuffer]) -> None:
        """Fit the encoder's state standardisation on every transition in ``buffers`` (see ``normalize_obs``).

        Called by the first :meth:`train_step`; the online and target encoders get the same statistics.
        """
        filled = [b for b in buffers if len(b)]
        if not filled:
            raise HilrlError("cannot fit the observation normaliser: every replay buffer is empty")
        states = {k: np.concatenate([b.obs[k][: len(b)] for b in filled]) for k in self.encoder.state_keys}
        self.encoder.fit_state_normalizer(states, self.config.obs_norm_min_std, self.config.obs_norm_clip)
        target = self.target["encoder"]
        for name in ("state_offset", "state_scale", "state_clip", "normalizer_fitted"):
            getattr(target, name).copy_(getattr(self.encoder, name))
        self._graph, self._static = None, None

    def fit_bc_prior(self, demo: ReplayBuffer | None) -> float:
        """Fit the learner's own BC prior (``bc_proposal``, or ``kl_coef > 0`` with no ``bc_policy``) on ``demo``.

        Called by the first :meth:`train_step`; returns the prior's final negative log-likelihood.
        """
        if self.bc_prior is None:
            raise HilrlError("fit_bc_prior: this learner has no prior of its own (bc_proposal is false and kl_coef "
                             "is 0 or a bc_policy was passed)")
        n = 0 if demo is None else len(demo)
        obs = {k: demo.obs[k][:n] for k in self.bc_prior.keys} if demo is not None else {}
        actions = demo.actions[:n] if demo is not None else np.zeros((0, self.action_dim), np.float32)
        nll = self.bc_prior.fit(obs, actions, self.config.bc_prior_updates, self.config.batch_size)
        self._bc_prior_ready = True
        self._graph, self._static = None, None
        return nll

    # ---- CUDA graph ------------------------------------------------------------------------

    def _graphed_update(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        """Replay a captured update after copying ``batch`` and ``noise`` into its static inputs."""
        if self._graph is None and self._eager_warmups < 3:
            # Warm-up on a side stream, as CUDA graph capture requires; these are real updates.
            self._eager_warmups += 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                metrics = self._update_tensors(batch, noise)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return metrics
        if self._graph is None or self._static is None or not _same_shapes(self._static[0], batch):
            static_batch = _clone_tree(batch)
            static_noise = _clone_tree(noise)
            graph = torch.cuda.CUDAGraph()
            torch.cuda.synchronize(self.device)
            with torch.cuda.graph(graph):
                static_metrics = self._update_tensors(static_batch, static_noise)
            self._graph, self._static = graph, (static_batch, static_noise, static_metrics)
        static_batch, static_noise, static_metrics = self._static
        _copy_tree(static_batch, batch)
        _copy_tree(static_noise, noise)
        self._graph.replay()
        return {k: v.clone() for k, v in static_metrics.items()}

    # ---- acting elsewhere --------------------------------------------------------------------

    def _acting_modules(self) -> dict[str, nn.Module]:
        """What :meth:`act` reads: the observation encoder and the actor; with ``bc_proposal`` also the BC
        prior and the critic ensemble that picks between the two actions (IBRL)."""
        modules: dict[str, nn.Module] = {"encoder": self.encoder, "actor": self.actor}
        if self.config.bc_proposal:
            assert self.bc_prior is not None
            modules.update(bc_prior=self.bc_prior, q=self.critic["q"])
        return modules

    def policy_weights(self) -> dict[str, np.ndarray]:
        """Everything :meth:`act` needs, as flat numpy arrays named ``module.parameter`` (sent to actors)."""
        return {f"{part}.{key}": value.detach().cpu().contiguous().numpy().copy()
                for part, module in self._acting_modules().items() for key, value in module.state_dict().items()}

    def load_policy_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy :meth:`policy_weights` of a learner built with the same config into this one."""
        modules = self._acting_modules()
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
        if self.bc_prior is not None and self.config.bc_proposal:
            self._bc_prior_ready = self.bc_prior.is_fitted

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: networks, optimisers, temperature, counters, RNG states, config."""
        return {
            "config": dataclasses.asdict(self.config),
            "critic": self.critic.state_dict(),
            "target": self.target.state_dict(),
            "actor": self.actor.state_dict(),
            "log_temperature": self.log_temperature.detach().clone(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "counters": {"num_updates": self.num_updates, "critic_updates": self.critic_updates,
                         "actor_updates": self.actor_updates},
            "torch_generator": self.generator.get_state(),
            "numpy_rng": self.np_rng.bit_generator.state,
            **({"bc_prior": self.bc_prior.state_dict()} if self.bc_prior is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the architecture settings must match this learner's."""
        saved = state.get("config", {})
        arch = ("obs_keys", "num_critics", "hidden", "critic_layer_norm", "actor_layer_norm", "image_latent_dim",
                "image_channels", "image_strides")
        mine = dataclasses.asdict(self.config)
        for name in arch:
            theirs = saved.get(name)
            theirs = tuple(theirs) if isinstance(theirs, list) else theirs
            if name in saved and theirs != mine[name]:
                raise HilrlError(f"checkpoint has {name}={theirs!r} but this learner was built with {mine[name]!r}; "
                                 "build the SAC with the checkpoint's config (SACConfig(**state['config']))")
        self.critic.load_state_dict(state["critic"])
        self.target.load_state_dict(state["target"])
        self.actor.load_state_dict(state["actor"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
        # Optimizer.load_state_dict keeps tensors already on the right device as they are: copy them, or a
        # learner loaded from another live learner would share (and double-update) its Adam moments.
        self.critic_optimizer.load_state_dict(copy.deepcopy(state["critic_optimizer"]))
        self.actor_optimizer.load_state_dict(copy.deepcopy(state["actor_optimizer"]))
        self.temperature_optimizer.load_state_dict(copy.deepcopy(state["temperature_optimizer"]))
        counters = state["counters"]
        self.num_updates = int(counters["num_updates"])
        self.critic_updates = int(counters["critic_updates"])
        self.actor_updates = int(counters["actor_updates"])
        self.generator.set_state(state["torch_generator"].cpu())
        self.np_rng.bit_generator.state = state["numpy_rng"]
        if self.bc_prior is not None and "bc_prior" in state:
            self.bc_prior.load_state_dict(state["bc_prior"])
            self._bc_prior_ready = self.bc_prior.is_fitted
        self._graph, self._static = None, None  # optimiser state tensors were replaced: recapture
        if self._fused_update is not None:
            self._fused_update.reset()

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state_dict` to ``path`` through a temp file and a rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box,
             device: torch.device | str = "cpu", **kwargs: Any) -> SAC:
        """Rebuild a learner from :meth:`save` (config from the file) and restore its state."""
        path = Path(path)
        if not path.is_file():
            raise HilrlError(f"{path}: no such SAC checkpoint")
        state = torch.load(path, map_location=device, weights_only=False)
        fields = {f.name for f in dataclasses.fields(SACConfig)}
        config = SACConfig(**{k: v for k, v in state["config"].items() if k in fields})
        learner = cls(observation_space, action_space, config, device=device, **kwargs)
        learner.load_state_dict(state)
        return learner


def resolve_device(device: torch.device | str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU; ``cuda`` on a machine without one is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HilrlError(f"algo.device is {str(device)!r} but torch sees no CUDA device here; use device: auto "
                         "(CPU when there is no GPU) or cpu")
    return device


def _demo_mask(online_size: int, demo_size: int, cfg: SACConfig) -> np.ndarray:
    """1.0 on the demo rows of a :func:`mixed_sample` batch: the last ``n_demo`` rows of every slice."""
    n_demo = demo_rows(online_size, demo_size, cfg.batch_size, cfg.demo_fraction)
    mask = np.zeros((cfg.utd, cfg.batch_size), np.float32)
    mask[:, cfg.batch_size - n_demo:] = 1.0
    return mask.reshape(-1)


def _clone_tree(tree: Any) -> Any:
    return {k: _clone_tree(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree.clone()


def _copy_tree(dst: Any, src: Any) -> None:
    if isinstance(dst, Mapping):
        for k in dst:
            _copy_tree(dst[k], src[k])
    else:
        dst.copy_(src, non_blocking=True)


def _same_shapes(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(_same_shapes(a[k], b[k]) for k in a)
    return a.shape == b.shape and a.dtype == b.dtype
