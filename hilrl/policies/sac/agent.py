"""The SAC/RLPD learner: networks, optimisers, sampling, checkpoints (the algorithm protocol of
:mod:`hilrl.policies.registry`).

:class:`SAC` builds the networks and optimisers, samples the RLPD batch (``utd`` symmetric minibatches,
``demo_fraction`` of each from the demo buffer), fits what is fitted once (the state standardisation, the BC
prior), and runs one update per :meth:`SAC.train_on_batch` through the path its config picks: the eager
update (:mod:`hilrl.policies.sac.update`, the reference) or a speed path of :mod:`hilrl.policies.sac.fast`.
Acting lives in :mod:`hilrl.policies.sac.acting`.
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
from hilrl.policies.encoders import ObservationEncoder, split_observation_keys
from hilrl.policies.pretrained import FrozenImageEncoder
from hilrl.policies.networks import CriticEnsemble, TanhGaussianActor, xavier_init_
from hilrl.policies.sac import acting, fast
from hilrl.policies.sac import update as eager
from hilrl.policies.sac.config import SACConfig

TensorTree = dict[str, Any]

__all__ = ["SAC", "ActionLogProb", "batch_to_torch", "resolve_device"]


class ActionLogProb(Protocol):
    """A behaviour prior for KL regularisation: ``log pi_BC(actions | obs)`` with shape ``(B,)``."""

    def log_prob(self, obs: Mapping[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor: ...


def batch_to_torch(batch: Batch, device: torch.device | str) -> TensorTree:
    """A numpy batch (see :mod:`hilrl.data.buffers`) as tensors on ``device``.

    Floats become float32, ``terminated``/``truncated`` float32 masks, images stay uint8
    (a quarter of the bytes to move) and cached fp16 feature maps fp16 (the encoder converts them after the random
    shift). On CUDA the copies go through pinned memory and do not block.
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
            out[key] = {k: move(v, None if v.dtype in (np.uint8, np.float16) else torch.float32)
                        for k, v in value.items()}
        elif key in ("terminated", "truncated", "rewards", "actions"):
            out[key] = move(value, torch.float32)
        else:
            out[key] = move(value)
    return out


def resolve_device(device: torch.device | str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU; ``cuda`` on a machine without one is refused."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HilrlError(f"algo.device is {str(device)!r} but torch sees no CUDA device here; use device: auto "
                         "(CPU when there is no GPU) or cpu")
    return device


class SAC:
    """RLPD-style SAC learner for dict observations and a ``[-1, 1]`` Box action space.

    Args:
        observation_space: ``gymnasium.spaces.Dict`` of float state vectors and/or uint8 ``(H, W, 3)`` images.
        action_space: ``Box`` with bounds ``[-1, 1]`` (rescale the env's actions with a wrapper first).
        config: the learner's settings (:class:`~hilrl.policies.sac.config.SACConfig`).
        device: torch device for networks and updates; ``None`` takes ``config.device`` (:func:`resolve_device`).
        seed: seeds the network initialisation, the learner's torch generator and its numpy sampler.
        bc_policy: behaviour prior for KL regularisation (used when ``config.variants.kl_coef > 0``).
    """

    algo_name = "sac"

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box,
                 config: SACConfig | None = None, device: torch.device | str | None = None, seed: int = 0,
                 bc_policy: ActionLogProb | None = None):
        self.config = config = config if config is not None else SACConfig()
        run = config.execution
        device = config.device if device is None else device
        if str(device) == "auto" and run.cpu_fused_update:
            device = "cpu"  # the update this config asks for is a CPU update: auto picks where it runs
        self.device = resolve_device(device)
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise HilrlError(f"SAC needs a 1-D Box action space, got {action_space}")
        if not (np.allclose(action_space.low, -1.0) and np.allclose(action_space.high, 1.0)):
            raise HilrlError(f"SAC acts in [-1, 1] but the action space is [{action_space.low}, {action_space.high}]; "
                             "wrap the env with gymnasium.wrappers.RescaleAction(env, -1.0, 1.0)")
        # What the config cannot know (the machine, the task); rules between settings are SACConfig's.
        if run.cuda_graph and self.device.type != "cuda":
            raise HilrlError(f"SACConfig.execution.cuda_graph=True needs a CUDA device, got {self.device}")
        if run.cpu_fused_update and self.device.type != "cpu":
            raise HilrlError(f"SACConfig.execution.cpu_fused_update=True does not compute the update with device "
                             f"{self.device} (it is a CPU update); set device: cpu or auto, or set "
                             "execution.cpu_fused_update=False (the eager update does)")
        self.observation_space, self.action_space = observation_space, action_space
        self.action_dim = int(action_space.shape[0])
        self.target_entropy = (-self.action_dim / 2.0 if config.target_entropy is None
                               else float(config.target_entropy))
        self.use_kl = config.variants.kl_coef > 0
        # Our own prior (fitted on the demo buffer by the first train_step) for IBRL's proposals, and for
        # the KL term when no bc_policy is given.
        self.bc_prior: GaussianBCPrior | None = None
        if config.variants.bc_proposal or (self.use_kl and bc_policy is None):
            self.bc_prior = GaussianBCPrior(observation_space, self.action_dim, config.obs_keys, config.hidden,
                                            config.variants.bc_prior_min_std, seed=seed).to(self.device)
        if self.use_kl and bc_policy is None:
            bc_policy = self.bc_prior
        self.bc_policy = bc_policy

        images = config.images
        # With a frozen pretrained backbone (images.encoder: efficientnet_lite0) the training loop encodes each
        # frame once and stores its features (hilrl.runtime.steps.cache_frame_features reads frame_encoder).
        self.frame_encoder: FrozenImageEncoder | None = None
        if images.caches_features and split_observation_keys(observation_space, config.obs_keys)[1]:
            if self.bc_prior is not None:
                raise HilrlError("SACConfig.images.encoder: efficientnet_lite0 does not combine with "
                                 "variants.bc_proposal or variants.kl_coef > 0 yet (the BC prior has no pretrained "
                                 "encoder); turn those off, or use images.encoder: drq")
            self.frame_encoder = FrozenImageEncoder(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = ObservationEncoder(observation_space, config.obs_keys, images.latent_dim, images.channels,
                                         images.strides, images.feature_pad if self.frame_encoder else images.pad,
                                         frame_encoder=self.frame_encoder)
            critic_in = encoder.feature_dim + self.action_dim
            self.critic = nn.ModuleDict({
                "encoder": encoder,
                "q": CriticEnsemble(critic_in, config.hidden, config.num_critics, config.critic_layer_norm,
                                    fused=run.fused_layer_norm and self.device.type == "cpu"),
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
        if images.freeze_encoder:
            encoder.requires_grad_(False)
        self.encoder_trains = any(p.requires_grad for p in encoder.parameters())
        if run.cpu_fused_update and encoder.has_images:
            raise HilrlError("SACConfig.execution.cpu_fused_update=True does not compute the update with image "
                             "observations (the image encoder is not written out); set "
                             "execution.cpu_fused_update=False (the eager update does)")
        self.log_temperature = torch.tensor(float(np.log(config.init_temperature)), device=self.device,
                                            requires_grad=True)

        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        # Listed once: walking the module tree every critic step costs more than the Polyak update itself.
        self.polyak_pairs = (list(self.target.parameters()), list(self.critic.parameters()))
        # The ensembles as the update calls them: compiled wrappers share the modules' parameters.
        self.critic_q: Callable[..., torch.Tensor] = self.critic["q"]
        self.target_q: Callable[..., torch.Tensor] = self.target["q"]
        if run.compile_critic:
            self.critic_q = fast.compile_critic(self.critic["q"], self.device)
            self.target_q = fast.compile_critic(self.target["q"], self.device)
        self.actor_params = list(self.actor.parameters())
        self.critic_optimizer = self._adam(self.critic_params, config.critic_lr, run.cuda_graph)
        self.actor_optimizer = self._adam(self.actor_params, config.actor_lr, run.cuda_graph)
        self.temperature_optimizer = self._adam([self.log_temperature], config.temperature_lr, run.cuda_graph)

        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.np_rng = np.random.default_rng(seed)
        self.num_updates = 0
        self.critic_updates = 0
        self.actor_updates = 0
        self.bc_prior_ready = False  # a Python flag: reading the prior's tensor flag would sync a GPU per update

        # The path train_on_batch takes: a CUDA graph of the eager update, the C++ update, or the eager update.
        self.graphed: fast.GraphedUpdate | None = None
        self.cpp_update: fast.CppUpdate | None = None
        if run.cuda_graph:
            self.graphed = fast.GraphedUpdate(lambda batch, noise: self.eager_update(batch, noise), self.device)
        elif run.cpu_fused_update:
            self.cpp_update = fast.CppUpdate(self.update_parts(), config)

    def _adam(self, params: list[torch.Tensor], lr: float, capturable: bool) -> torch.optim.Adam:
        if self.device.type == "cuda":
            return torch.optim.Adam(params, lr=lr, capturable=capturable, foreach=True)
        # fused Adam runs one kernel for all parameters on CPU, far cheaper than the per-tensor loop.
        return torch.optim.Adam(params, lr=lr, fused=True)

    def update_parts(self) -> fast.UpdateParts:
        """The networks, optimisers and temperature a speed path reads and writes, by name."""
        return fast.UpdateParts(
            critic=self.critic["q"], target_critic=self.target["q"], encoder=self.encoder,
            target_encoder=self.target["encoder"],
            actor_linears=[layer for layer in self.actor.net if isinstance(layer, nn.Linear)],
            log_temperature=self.log_temperature, critic_optimizer=self.critic_optimizer,
            actor_optimizer=self.actor_optimizer, temperature_optimizer=self.temperature_optimizer,
            polyak=self.polyak_pairs, target_entropy=self.target_entropy, bc_prior=self.bc_prior)

    # ---- acting (hilrl.policies.sac.acting) ------------------------------------------------------

    def act(self, obs: Mapping[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """Actions for a batch of observations ``{key: (B, ...)}``, or one observation (no leading axis)."""
        return acting.act(self, obs, deterministic)

    def q_value(self, obs: Mapping[str, np.ndarray], actions: np.ndarray) -> np.ndarray:
        """The critic ensemble's mean Q(s, a) for a batch of observations ``{key: (B, ...)}`` and actions ``(B, A)``
        (a diagnostic: :mod:`hilrl.runtime.diagnostics` sets it against Monte-Carlo returns)."""
        return acting.q_value(self, obs, actions)

    def policy_weights(self) -> dict[str, np.ndarray]:
        """Everything :meth:`act` needs, as flat numpy arrays named ``module.parameter`` (sent to actors)."""
        return acting.policy_weights(self)

    def load_policy_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Copy :meth:`policy_weights` of a learner built with the same config into this one."""
        acting.load_policy_weights(self, weights)

    # ---- learning (the update itself: hilrl.policies.sac.update) --------------------------------

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.detach().exp()

    def draw_noise(self, batch_size: int) -> TensorTree:
        """All randomness one update uses, from the learner's generator
        (:func:`~hilrl.policies.sac.update.draw_noise`)."""
        return eager.draw_noise(self, batch_size)

    def next_actions(self, next_obs: TensorTree, eps: torch.Tensor, shifts: TensorTree | None,
                     temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``a' ~ pi(s')`` and the regulariser at ``(s', a')`` (:func:`~hilrl.policies.sac.update.next_actions`)."""
        return eager.next_actions(self, next_obs, eps, shifts, temperature)

    def critic_target(self, rewards: torch.Tensor, mask: torch.Tensor, next_obs: TensorTree,
                      next_actions: torch.Tensor, next_reg: torch.Tensor, members: torch.Tensor,
                      shifts: TensorTree | None = None) -> torch.Tensor:
        """``r + gamma * mask * (min_{i in members} Q'_i(s', a') - next_reg)``
        (:func:`~hilrl.policies.sac.update.critic_target`)."""
        return eager.critic_target(self, rewards, mask, next_obs, next_actions, next_reg, members, shifts)

    def eager_update(self, batch: TensorTree, noise: TensorTree) -> TensorTree:
        """The reference update, :func:`~hilrl.policies.sac.update.rlpd_update` (``benchmarks/learner_throughput.py``
        compiles it in ``--levers``)."""
        return eager.rlpd_update(self, batch, noise)

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
        if self.bc_prior is not None and not self.bc_prior_ready:
            raise HilrlError("SACConfig.variants.kl_coef > 0 or bc_proposal: the BC prior is not fitted yet; call "
                             "fit_bc_prior(demo_buffer) first (train_step does it on its first call)")
        if total % self.config.utd:
            raise HilrlError(f"a batch of {total} transitions does not split into utd={self.config.utd} slices; "
                             f"pass utd * batch_size rows")
        batch_size = total // self.config.utd
        noise = self.draw_noise(batch_size) if noise is None else noise
        if self.graphed is not None:
            metrics = self.graphed(batch, noise)
        elif self.cpp_update is not None:
            metrics = self.cpp_update(batch, noise)
        else:
            metrics = self.eager_update(batch, noise)
        self.num_updates += 1
        self.critic_updates += self.config.utd
        self.actor_updates += 1
        return metrics

    def train_step(self, online: ReplayBuffer, demo: ReplayBuffer | None = None) -> dict[str, torch.Tensor]:
        """Sample ``utd`` symmetric minibatches (``demo_fraction`` from ``demo``), then :meth:`train_on_batch`.

        The batch's ``rewards`` are what the buffers' reward source gives (the env reward without one;
        :class:`hilrl.data.buffers.Replay`): the one door for rewards.
        """
        cfg = self.config
        if cfg.normalisation.enabled and not self.encoder.is_normalizer_fitted:
            self.fit_normalizer([online] if demo is None else [online, demo])
        if self.bc_prior is not None and not self.bc_prior_ready:
            self.fit_bc_prior(demo)
        batch = mixed_sample(online, demo, cfg.batch_size, self.np_rng, cfg.demo_fraction, cfg.utd)
        if demo is not None and len(demo):  # (the TD3+BC term and the split Q metrics read it)
            batch["demo_mask"] = _demo_mask(len(online), len(demo), cfg)
        return self.train_on_batch(batch_to_torch(batch, self.device))

    def fit_normalizer(self, buffers: list[ReplayBuffer]) -> None:
        """Fit the encoder's state standardisation on every transition in ``buffers`` (``normalisation``).

        Called by the first :meth:`train_step`; the online and target encoders get the same statistics.
        """
        filled = [b for b in buffers if len(b)]
        if not filled:
            raise HilrlError("cannot fit the observation normaliser: every replay buffer is empty")
        states = {k: np.concatenate([b.obs[k][: len(b)] for b in filled]) for k in self.encoder.state_keys}
        self.encoder.fit_state_normalizer(states, self.config.normalisation.min_std, self.config.normalisation.clip)
        target = self.target["encoder"]
        for name in ("state_offset", "state_scale", "state_clip", "normalizer_fitted"):
            getattr(target, name).copy_(getattr(self.encoder, name))
        self._forget_graph()

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
        nll = self.bc_prior.fit(obs, actions, self.config.variants.bc_prior_updates, self.config.batch_size)
        self.bc_prior_ready = True
        self._forget_graph()
        return nll

    def _forget_graph(self) -> None:
        if self.graphed is not None:
            self.graphed.reset()

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
        """Restore a :meth:`state_dict` (of this layout or the earlier flat config's); the architecture settings
        must match this learner's."""
        saved = SACConfig.upgrade_keys(state.get("config", {}))
        mine = dataclasses.asdict(self.config)
        for path in ("obs_keys", "num_critics", "hidden", "critic_layer_norm", "actor_layer_norm",
                     "images.encoder", "images.latent_dim", "images.channels", "images.strides"):
            section, _, name = path.rpartition(".")
            theirs_in, mine_in = (saved.get(section, {}), mine[section]) if section else (saved, mine)
            if name not in theirs_in:
                continue
            theirs = theirs_in[name]
            theirs = tuple(theirs) if isinstance(theirs, list) else theirs
            if theirs != mine_in[name]:
                raise HilrlError(f"checkpoint has {path}={theirs!r} but this learner was built with {mine_in[name]!r}; "
                                 "build the SAC with the checkpoint's config (SACConfig.from_dict(state['config']))")
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
            self.bc_prior_ready = self.bc_prior.is_fitted
        self._forget_graph()  # optimiser state tensors were replaced: recapture
        if self.cpp_update is not None:
            self.cpp_update.reset()

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
        learner = cls(observation_space, action_space, SACConfig.from_dict(state["config"]), device=device, **kwargs)
        learner.load_state_dict(state)
        return learner


def _demo_mask(online_size: int, demo_size: int, cfg: SACConfig) -> np.ndarray:
    """1.0 on the demo rows of a :func:`mixed_sample` batch: the last ``n_demo`` rows of every slice."""
    n_demo = demo_rows(online_size, demo_size, cfg.batch_size, cfg.demo_fraction)
    mask = np.zeros((cfg.utd, cfg.batch_size), np.float32)
    mask[:, cfg.batch_size - n_demo:] = 1.0
    return mask.reshape(-1)
