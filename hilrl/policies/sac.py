"""Soft actor-critic in the RLPD form used by HIL-SERL and RLIF.

One update (``SAC.update``) on a batch of ``utd * batch_size`` transitions:

1. ``utd`` critic steps, one per consecutive minibatch slice. The target is
   ``r + gamma * (1 - terminated) * (min over 2 random target members of Q'(s', a') - reg(s', a'))``
   with ``a' ~ pi(s')``; ``reg`` is ``alpha * log pi`` (SAC), omitted when
   ``backup_entropy=False`` (RLIF), or ``kl_coef * (log pi - log pi_BC)`` with a
   BC prior (Demonstration-Regularized RL). Truncated steps bootstrap. After each
   critic step the target networks move by Polyak averaging (``tau``).
2. One actor step on the last slice: minimise ``reg(s, a) - mean_i Q_i(s, a)``, plus, with
   ``bc_coef > 0``, ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2`` on that slice's demo rows
   (TD3+BC's behaviour-cloning term with its Q-scale normalisation; not part of RLPD).
3. One temperature step: minimise ``alpha * (-log pi - target_entropy)``.

Image observations go through an encoder owned by the critic (critic gradients
train it); the actor reads its features detached, as in DrQ/SERL.
See ALGORITHMS.md, "RLPD / HIL-SERL learner", for the reference semantics.

The hot path keeps metrics as tensors (no ``.item()`` per update): convert with
``{k: float(v) for k, v in metrics.items()}`` only when logging.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hilrl.data.buffers import Batch, ReplayBuffer, demo_rows, mixed_sample
from hilrl.errors import HilrlError
from hilrl.policies.bc_prior import GaussianBCPrior
from hilrl.policies.encoders import ObservationEncoder
from hilrl.policies.networks import CriticEnsemble, TanhGaussianActor

TensorTree = dict[str, Any]


class ActionLogProb(Protocol):
    """A behaviour prior for KL regularisation: ``log pi_BC(actions | obs)`` with shape ``(B,)``."""

    def log_prob(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SACConfig:
    """Every setting of the SAC/RLPD learner, with the source of each default.

    Defaults follow HIL-SERL's state-based learner where it and RLPD agree, and
    RLPD/RLIF otherwise (sources: ALGORITHMS.md). ``SACConfig.rlif()`` and
    ``SACConfig.hil_serl()`` give the two published configurations.

    Attributes:
        obs_keys: observation keys to use (``None``: all). State keys are concatenated in sorted order.
        num_critics: ensemble size. 2 (HIL-SERL); RLIF/RLPD use 10.
        num_min_critics: target members the min is taken over. 2 (RLPD, RLIF).
        hidden: hidden widths of actor and critics. (256, 256) (HIL-SERL); RLIF uses (256, 256, 256).
        critic_layer_norm: LayerNorm in every critic hidden layer (RLPD, HIL-SERL). The actor has none (RLPD).
        actor_lr, critic_lr, temperature_lr: Adam learning rates, 3e-4 everywhere (RLPD, RLIF, HIL-SERL).
        gamma: discount, 0.99 (RLPD, RLIF, LeRobot); HIL-SERL uses 0.97.
        tau: Polyak rate of the target critic, 0.005 (RLPD, RLIF).
        batch_size: minibatch size per critic step, 256 (all three).
        utd: critic steps per actor step, each on its own slice of one ``batch_size * utd`` batch.
            1 (LeRobot; RLIF Walker2d); RLIF Pen 5, Hopper 15. HIL-SERL's ``critic_actor_ratio`` (2) maps here.
        init_temperature: initial alpha, 1.0 (RLPD, RLIF). LeRobot's docs suggest 1e-2 for real robots.
        target_entropy: entropy target; ``None`` means ``-|A| / 2`` (RLPD, RLIF).
        learn_temperature: tune alpha towards ``target_entropy`` (SAC, RLPD).
        backup_entropy: subtract the entropy (or KL) term in the critic target. True (SAC);
            RLIF turns it off.
        demo_fraction: share of each minibatch drawn from the demo buffer, 0.5 (RLPD's symmetric
            sampling; HIL-SERL 128 + 128). All online when the demo buffer is empty.
        max_grad_norm: clip gradient norms of every network (``None``: no clipping; LeRobot uses 40).
        log_std_min, log_std_max: bounds of the actor's log-std, -20 and 2 (RLPD's TanhNormal).
        kl_coef: lambda of Demonstration-Regularized RL; with ``kl_coef > 0`` the term ``alpha * log pi``
            becomes ``kl_coef * (log pi - log pi_BC)`` and alpha is not tuned. ``pi_BC`` is the ``bc_policy``
            passed to :class:`SAC`, or else a :class:`~hilrl.policies.bc_prior.GaussianBCPrior` fitted on the
            demo buffer at the first :meth:`SAC.train_step` and saved in checkpoints.
        bc_proposal: IBRL (Imitation Bootstrapped RL, Hu et al. 2023; not in ALGORITHMS.md): the BC prior's
            mean action ``tanh(mu_BC(s))`` competes with the actor's action wherever an action is chosen by
            value. When acting, the one with the higher critic value (mean over the ensemble) is taken; in the
            critic target, ``V(s') = max(min_i Q'_i(s', a'_RL) - reg, min_i Q'_i(s', a'_BC))``. The prior is the
            same :class:`~hilrl.policies.bc_prior.GaussianBCPrior` the KL term uses, fitted on the demo buffer
            at the first :meth:`SAC.train_step`. False (RLPD, HIL-SERL). For few demos: the policy starts at
            the imitation policy's level instead of the untrained actor's.
        bc_prior_updates: maximum-likelihood steps of that fit (batch ``batch_size``, Adam 1e-3).
        bc_prior_min_std: floor of that prior's pre-tanh std, 0.2 (ours; the paper's prior is not squashed).
            A demonstrator that is deterministic would otherwise give a prior too sharp to regularise towards.
        image_latent_dim: features per image key, 50 (DrQ).
        image_channels, image_strides: conv stack of the image encoder, 4 x 32 channels, strides
            (2, 1, 1, 1) (DrQ). HIL-SERL uses a pretrained ResNet-10 instead (not bundled).
        image_pad: pixels of replicate padding for the random-shift augmentation, 4 (DrQ).
        augment: apply random shift to images in updates (DrQ, SERL, HIL-SERL).
        freeze_encoder: keep the image encoder fixed (HIL-SERL freezes its pretrained encoder).
        normalize_obs: standardise state features by a per-dimension mean and std fitted once, at the
            first :meth:`SAC.train_step`, on every transition then in the demo and online buffers, and
            frozen afterwards (saved with the networks). Off by default as in RLPD (raw states); turning it
            on took Reach from 10% to 90% eval success at 2000 env steps (see :mod:`hilrl.policies.encoders`).
        obs_norm_min_std: floor of that std, so near-constant dimensions are not blown up.
        obs_norm_clip: standardised state features are clipped to ``[-obs_norm_clip, obs_norm_clip]``.
        bc_coef: weight of a behaviour-cloning term in the actor loss on the demo rows of each batch,
            ``bc_coef * mean|Q| * ||tanh(mu(s)) - a_demo||^2``. 0 (RLPD, HIL-SERL: none). The ``mean|Q|``
            factor is TD3+BC's normalisation (Fujimoto & Gu 2021: alpha 2.5 there is ``bc_coef = 0.4``), so the
            setting does not depend on the reward scale. It helps where few demos must guide a long,
            precise task (PickCube) faster than the critic alone can.
        compile_critic: run the online and target critic ensembles through ``torch.compile`` (inductor),
            which fuses the LayerNorm/affine/ReLU passes eager PyTorch makes over every ``(N, B, hidden)``
            activation. Speed only (same maths; floating-point results differ in the last bits). The first
            updates compile (seconds to a minute); on CPU it needs a C++ compiler. Off by default; see
            ``benchmarks/learner_throughput.py`` for what it buys on your machine. Not with ``cuda_graph``.
    """

    obs_keys: tuple[str, ...] | None = None
    num_critics: int = 2
    num_min_critics: int = 2
    hidden: tuple[int, ...] = (256, 256)
    critic_layer_norm: bool = True
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    utd: int = 1
    init_temperature: float = 1.0
    target_entropy: float | None = None
    learn_temperature: bool = True
    backup_entropy: bool = True
    demo_fraction: float = 0.5
    max_grad_norm: float | None = None
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    kl_coef: float = 0.0
    bc_proposal: bool = False
    bc_prior_updates: int = 2000
    bc_prior_min_std: float = 0.2
    image_latent_dim: int = 50
    image_channels: tuple[int, ...] = (32, 32, 32, 32)
    image_strides: tuple[int, ...] = (2, 1, 1, 1)
    image_pad: int = 4
    augment: bool = True
    freeze_encoder: bool = False
    normalize_obs: bool = False
    obs_norm_min_std: float = 0.05
    obs_norm_clip: float = 10.0
    bc_coef: float = 0.0
    compile_critic: bool = False

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.image_channels = tuple(int(c) for c in self.image_channels)
        self.image_strides = tuple(int(s) for s in self.image_strides)
        if self.obs_keys is not None:
            self.obs_keys = tuple(self.obs_keys)
        checks = [
            (self.num_critics >= 1, f"num_critics must be >= 1, got {self.num_critics}"),
            (1 <= self.num_min_critics <= self.num_critics,
             f"num_min_critics must be between 1 and num_critics ({self.num_critics}), got {self.num_min_critics}"),
            (len(self.hidden) >= 1 and min(self.hidden) >= 1, f"hidden must list positive widths, got {self.hidden}"),
            (0.0 <= self.gamma <= 1.0, f"gamma must be within [0, 1], got {self.gamma}"),
            (0.0 < self.tau <= 1.0, f"tau must be within (0, 1], got {self.tau}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.utd >= 1, f"utd must be >= 1, got {self.utd}"),
            (self.init_temperature > 0.0, f"init_temperature must be > 0, got {self.init_temperature}"),
            (0.0 <= self.demo_fraction <= 1.0, f"demo_fraction must be within [0, 1], got {self.demo_fraction}"),
            (self.kl_coef >= 0.0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.bc_prior_updates >= 1, f"bc_prior_updates must be >= 1, got {self.bc_prior_updates}"),
            (self.bc_prior_min_std > 0, f"bc_prior_min_std must be > 0, got {self.bc_prior_min_std}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}"),
            (min(self.actor_lr, self.critic_lr, self.temperature_lr) > 0, "learning rates must be > 0"),
            (self.obs_norm_min_std > 0, f"obs_norm_min_std must be > 0, got {self.obs_norm_min_std}"),
            (self.obs_norm_clip > 0, f"obs_norm_clip must be > 0, got {self.obs_norm_clip}"),
            (self.bc_coef >= 0.0, f"bc_coef must be >= 0, got {self.bc_coef}"),
        ]
        for ok, message in checks:
            if not ok:
                raise HilrlError(f"SACConfig: {message}")

    @property
    def critic_actor_ratio(self) -> int:
        """HIL-SERL/SERL's name for :attr:`utd` (critic steps per actor step)."""
        return self.utd

    @classmethod
    def rlif(cls, **overrides: Any) -> SACConfig:
        """RLIF's RLPD configuration (pd-perry/RLIF, ``configs/rlpd_config.py``)."""
        values = dict(num_critics=10, hidden=(256, 256, 256), gamma=0.99, backup_entropy=False, utd=5)
        return cls(**{**values, **overrides})

    @classmethod
    def hil_serl(cls, **overrides: Any) -> SACConfig:
        """HIL-SERL's learner (rail-berkeley/hil-serl): 2 critics, gamma 0.97, critic-to-actor ratio 2."""
        values = dict(num_critics=2, hidden=(256, 256), gamma=0.97, utd=2, freeze_encoder=True)
        return cls(**{**values, **overrides})


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
        device: torch device for networks and updates.
        seed: seeds the network initialisation, the learner's torch generator and its numpy sampler.
        bc_policy: behaviour prior for KL regularisation (used when ``config.kl_coef > 0``).
        cuda_graph: capture the whole update as a CUDA graph after three eager warm-up updates
            (CUDA only; removes Python and launch overhead).
    """

    algo_name = "sac"

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box,
                 config: SACConfig | None = None, device: torch.device | str = "cpu", seed: int = 0,
                 bc_policy: ActionLogProb | None = None, cuda_graph: bool = False):
        self.config = config = config if config is not None else SACConfig()
        self.device = torch.device(device)
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
        if config.compile_critic and self.device.type == "cpu" and not _has_cxx_compiler():
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
                "q": CriticEnsemble(critic_in, config.hidden, config.num_critics, config.critic_layer_norm),
            }).to(self.device)
            self.actor = TanhGaussianActor(encoder.feature_dim, self.action_dim, config.hidden,
                                           config.log_std_min, config.log_std_max).to(self.device)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.encoder: ObservationEncoder = encoder
        self.keys = encoder.state_keys + encoder.image_keys
        if config.freeze_encoder:
            encoder.requires_grad_(False)
        self.encoder_trains = any(p.requires_grad for p in encoder.parameters())
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

    # ---- learning --------------------------------------------------------------------------

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.detach().exp()

    def draw_noise(self, batch_size: int) -> TensorTree:
        """All randomness one update uses, from the learner's generator.

        ``next_eps (utd*B, A)`` and ``actor_eps (B, A)`` are policy noise, ``members (utd, K)`` the
        target members of each critic step, ``obs_shift``/``next_shift`` the image shifts per key.
        """
        cfg, g, dev = self.config, self.generator, self.device
        total = batch_size * cfg.utd
        noise: TensorTree = {
            "next_eps": torch.randn(total, self.action_dim, generator=g, device=dev),
            "actor_eps": torch.randn(batch_size, self.action_dim, generator=g, device=dev),
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

        # Actor and temperature on the last slice (RLPD): features detached from the encoder.
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
        temperature_loss = self.log_temperature.exp() * (entropy - self.target_entropy)
        if cfg.learn_temperature and not self.use_kl:
            self._step(self.temperature_optimizer, temperature_loss, [self.log_temperature])
        return {
            "critic_loss": critic_loss.detach(), "q": q.detach().mean(), "target_q": target_q.mean(),
            "actor_loss": actor_loss.detach(), "entropy": entropy, "temperature": temperature,
            "temperature_loss": temperature_loss.detach(), "bc_loss": bc_loss.detach(),
        }

    def update(self, batch: TensorTree, noise: TensorTree | None = None) -> dict[str, torch.Tensor]:
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
        else:
            metrics = self._update_tensors(batch, noise)
        self.num_updates += 1
        self.critic_updates += self.config.utd
        self.actor_updates += 1
        return metrics

    def train_step(self, online: ReplayBuffer, demo: ReplayBuffer | None = None,
                   relabel: Callable[[Batch], np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        """Sample ``utd`` symmetric minibatches (``demo_fraction`` from ``demo``), optionally relabel rewards, update.

        ``relabel(batch) -> rewards`` is a reward source (DESIGN.md door 2): it sees the numpy batch.
        """
        cfg = self.config
        if cfg.normalize_obs and not self.encoder.is_normalizer_fitted:
            self.fit_normalizer([online] if demo is None else [online, demo])
        if self.bc_prior is not None and not self._bc_prior_ready:
            self.fit_bc_prior(demo)
        batch = mixed_sample(online, demo, cfg.batch_size, self.np_rng, cfg.demo_fraction, cfg.utd)
        if cfg.bc_coef > 0:
            batch["demo_mask"] = _demo_mask(len(online), 0 if demo is None else len(demo), cfg)
        if relabel is not None:
            batch["rewards"] = np.asarray(relabel(batch), np.float32).reshape(-1)
        return self.update(batch_to_torch(batch, self.device))

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
        arch = ("obs_keys", "num_critics", "hidden", "critic_layer_norm", "image_latent_dim", "image_channels",
                "image_strides")
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


def _has_cxx_compiler() -> bool:
    """Whether torch.compile can build CPU kernels here (it uses ``$CXX``, else g++ or clang++)."""
    return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if name)


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
