"""Observation encoders: dict observations -> one feature vector.

State keys (float vectors) are concatenated in sorted key order; image keys
(``uint8`` arrays ``(H, W, 3)``) each go through a small CNN (DrQ-style: four
3x3 convolutions, a linear projection, LayerNorm and tanh). Images can be
augmented with DrQ's random shift (replicate-pad by ``pad`` pixels, then crop
back at a random offset per sample), the augmentation SERL and HIL-SERL use.

With a frozen pretrained backbone (``frame_encoder``, :class:`hilrl.policies.pretrained.FrozenImageEncoder`)
each image key instead goes through that backbone and HIL-SERL's learned spatial embedding
(:class:`~hilrl.policies.pretrained.SpatialEmbedding`). Such a key takes either the raw ``uint8`` frame
``(B, H, W, 3)`` (acting, evaluation: the backbone runs here) or its cached feature map, float ``(B, C, h, w)``
(what the training loop stores, :func:`hilrl.runtime.steps.cache_frame_features`: the backbone does not run);
the random shift then moves the feature map by up to ``pad`` cells, which survives caching.

State features can be standardised by a fixed per-dimension offset and scale
(:meth:`ObservationEncoder.fit_state_normalizer`). Why: arm positions span a few
tenths of a metre, so raw inputs differ by centimetres between states that need
opposite actions, and an MLP learns such small input differences slowly. The
statistics are buffers (they travel with ``state_dict``, checkpoints and the
weights sent to actors) and never change after fitting, so the critic's
targets stay consistent. RLPD itself feeds raw states; this is our departure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from hilrl.errors import HilrlError
from hilrl.policies.pretrained import FrozenImageEncoder, SpatialEmbedding, spatial_embeddings


def is_image_space(space: gym.Space) -> bool:
    """Images are ``uint8`` boxes of shape ``(H, W, 3)``."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 \
        and space.shape[-1] == 3


def split_observation_keys(observation_space: gym.spaces.Dict,
                           obs_keys: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The (state keys, image keys) to use, each sorted; ``obs_keys=None`` means every key."""
    if not isinstance(observation_space, gym.spaces.Dict):
        raise HilrlError(f"the observation space must be a gymnasium Dict space, got "
                         f"{type(observation_space).__name__}; wrap a flat Box env so that it returns {{'state': obs}}")
    available = sorted(observation_space.spaces)
    names = sorted(obs_keys) if obs_keys is not None else available
    missing = [k for k in names if k not in observation_space.spaces]
    if missing:
        raise HilrlError(f"obs_keys {missing} are not in the observation space; choose from {available}")
    if not names:
        raise HilrlError("obs_keys is empty; name at least one observation key or pass None for all")
    state, image = [], []
    for key in names:
        space = observation_space[key]
        if is_image_space(space):
            image.append(key)
        elif isinstance(space, gym.spaces.Box) and np.issubdtype(space.dtype, np.floating):
            state.append(key)
        else:
            raise HilrlError(f"observation key {key!r} has space {space}; expected a float Box (state) or a "
                             "uint8 Box of shape (H, W, 3) (image); leave it out with obs_keys")
    return state, image


def random_shift(images: torch.Tensor, shifts: torch.Tensor, pad: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """DrQ random shift of ``images (B, C, H, W)``: replicate-pad, then crop at ``shifts (B, 2)`` in ``[0, 2*pad]``.

    A shift of ``(pad, pad)`` returns the image unchanged. Computed as one gather with the source row and column
    clamped to the image (what replicate padding then cropping reads), without building the padded copy; into
    ``out`` (same shape and dtype) when given.
    """
    batch, channels, height, width = images.shape
    offsets = shifts - pad
    rows = (offsets[:, 0:1] + torch.arange(height, device=images.device)).clamp_(0, height - 1)  # (B, H)
    cols = (offsets[:, 1:2] + torch.arange(width, device=images.device)).clamp_(0, width - 1)  # (B, W)
    source = (rows[:, :, None] * width + cols[:, None, :]).reshape(batch, 1, height * width)
    flat = images.reshape(batch, channels, height * width)
    index = source.expand(batch, channels, height * width)
    if out is None:
        return flat.gather(2, index).reshape(batch, channels, height, width)
    torch.gather(flat, 2, index, out=out.view(batch, channels, height * width))
    return out


class ConvEncoder(nn.Module):
    """One image -> ``latent_dim`` features (conv stack, linear, LayerNorm, tanh; DrQ's encoder)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: Sequence[int] = (32, 32, 32, 32),
                 strides: Sequence[int] = (2, 1, 1, 1), latent_dim: int = 50):
        super().__init__()
        if len(channels) != len(strides):
            raise HilrlError(f"image encoder: {len(channels)} channel sizes but {len(strides)} strides; give one "
                             "stride per conv layer")
        height, width, in_channels = image_shape
        layers: list[nn.Module] = []
        for out_channels, stride in zip(channels, strides):
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride), nn.ReLU()]
            in_channels = out_channels
        self.convs = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, image_shape[2], height, width)).shape[-1]
        self.project = nn.Sequential(nn.Linear(flat, latent_dim), nn.LayerNorm(latent_dim), nn.Tanh())
        self.latent_dim = latent_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` is float ``(B, C, H, W)`` in ``[0, 1]``."""
        return self.project(self.convs(images))


class ObservationEncoder(nn.Module):
    """Dict observation (batched torch tensors) -> features ``(B, F)``.

    Output layout: state keys concatenated (sorted), then one ``latent_dim``
    block per image key (sorted). With no image keys it has no parameters.

    Args:
        observation_space: the env's raw ``Dict`` space (images as uint8 ``(H, W, 3)``).
        obs_keys: keys to use (``None``: all).
        latent_dim: features per image key.
        channels, strides: the DrQ CNN's conv stack (ignored with ``frame_encoder``).
        image_pad: replicate padding of the random shift: pixels (DrQ CNN) or feature-map cells (``frame_encoder``).
        frame_encoder: a frozen pretrained backbone; each image key then gets a spatial-embedding head over its
            feature map instead of a CNN (module docstring). Not a submodule: it is in no ``state_dict``.
    """

    def __init__(self, observation_space: gym.spaces.Dict, obs_keys: Sequence[str] | None = None,
                 latent_dim: int = 50, channels: Sequence[int] = (32, 32, 32, 32),
                 strides: Sequence[int] = (2, 1, 1, 1), image_pad: int = 4,
                 frame_encoder: FrozenImageEncoder | None = None):
        super().__init__()
        self.state_keys, self.image_keys = split_observation_keys(observation_space, obs_keys)
        self.state_dims = {k: int(np.prod(observation_space[k].shape)) for k in self.state_keys}
        self.image_shapes = {k: tuple(observation_space[k].shape) for k in self.image_keys}
        self.image_pad = image_pad
        self._workspaces: dict[tuple[str, str], torch.Tensor] = {}  # shift_feature_maps(reuse=...)
        self.frame_encoder = frame_encoder if self.image_keys else None
        if self.frame_encoder is not None:
            self.feature_shapes = {k: self.frame_encoder.feature_shape(self.image_shapes[k]) for k in self.image_keys}
            self.cnns = nn.ModuleDict({k: SpatialEmbedding(*self.feature_shapes[k], latent_dim)
                                       for k in self.image_keys})
        else:
            self.cnns = nn.ModuleDict({k: ConvEncoder(self.image_shapes[k], channels, strides, latent_dim)
                                       for k in self.image_keys})
        self.feature_dim = sum(self.state_dims.values()) + latent_dim * len(self.image_keys)
        state_dim = sum(self.state_dims.values())
        # Identity until fitted; the clip bound is +inf until then so raw states pass unchanged.
        self.register_buffer("state_offset", torch.zeros(state_dim))
        self.register_buffer("state_scale", torch.ones(state_dim))
        self.register_buffer("state_clip", torch.tensor(float("inf")))
        self.register_buffer("normalizer_fitted", torch.tensor(False))

    @property
    def is_normalizer_fitted(self) -> bool:
        return bool(self.normalizer_fitted)

    @torch.no_grad()
    def fit_state_normalizer(self, states: Mapping[str, np.ndarray], min_std: float = 0.05,
                             clip: float = 10.0) -> None:
        """Fix the state standardisation ``clip((x - mean) / max(std, min_std))`` from samples ``{key: (N, ...)}``.

        ``min_std`` keeps near-constant dimensions (e.g. an object's orientation that
        the demos never change) from being blown up; ``clip`` bounds features of states
        far outside the samples.
        """
        if not self.state_keys:
            return
        missing = [k for k in self.state_keys if k not in states]
        if missing:
            raise HilrlError(f"fit_state_normalizer: samples lack state keys {missing}; pass every key of "
                             f"{self.state_keys}")
        if min_std <= 0 or clip <= 0:
            raise HilrlError(f"fit_state_normalizer: min_std ({min_std}) and clip ({clip}) must be > 0")
        rows = {len(states[k]) for k in self.state_keys}
        if len(rows) != 1 or 0 in rows:
            raise HilrlError(f"fit_state_normalizer: need the same, non-zero number of samples per key, got "
                             f"{ {k: len(states[k]) for k in self.state_keys} }")
        flat = np.concatenate([np.asarray(states[k], np.float64).reshape(len(states[k]), -1)
                               for k in self.state_keys], axis=1)
        if not np.isfinite(flat).all():
            raise HilrlError("fit_state_normalizer: samples hold NaN or inf values; check the observations stored")
        self.state_offset.copy_(torch.as_tensor(flat.mean(axis=0)))
        self.state_scale.copy_(torch.as_tensor(1.0 / np.maximum(flat.std(axis=0), min_std)))
        self.state_clip.fill_(float(clip))
        self.normalizer_fitted.fill_(True)

    @property
    def has_images(self) -> bool:
        return bool(self.image_keys)

    def shift_feature_maps(self, obs: Mapping[str, torch.Tensor], shifts: Mapping[str, torch.Tensor],
                           reuse: str | None = None, shift_to_float: Callable[..., bool] | None = None
                           ) -> dict[str, torch.Tensor]:
        """``obs`` with each cached feature map randomly shifted (``frame_encoder`` only): ``forward(obs, shifts)``
        equals ``forward(shift_feature_maps(obs, shifts))``, so an update that encodes the same batch several
        times (critic and actor steps) shifts it once.

        ``reuse`` names the memory the shifted maps are written to, kept by the encoder: the next call with the same
        name and sizes writes over it (an update shifts its obs and its next_obs under two names). On a CPU, fresh
        memory for a batch of maps costs more than filling it (page faults: about 1 ms per 5 MB here). Autograd
        refuses a backward pass through maps written over since.

        ``shift_to_float(maps, shifts, pad, out) -> bool`` shifts fp16 CPU maps into float32 ``out`` in one pass and
        says whether it could (the SAC update passes :func:`hilrl.policies.sac.fast.shift_feature_maps_to_float`,
        C++ where the extensions build); otherwise, or when it cannot, torch's gather, the same numbers.
        """
        if self.frame_encoder is None:
            raise HilrlError("shift_feature_maps: this encoder has no frozen backbone; pass shifts to forward")
        out = dict(obs)
        for key in self.image_keys:
            if obs[key].dtype == torch.uint8:
                raise HilrlError(f"shift_feature_maps: {key!r} holds raw frames, not cached feature maps")
            maps, name = obs[key], None if reuse is None else f"{reuse}/{key}"
            if maps.dtype == torch.float16:  # as stored
                out[key] = self._workspace(name, "float32", maps.shape, torch.float32, maps.device)
                if maps.device.type == "cpu" and shift_to_float is not None and shift_to_float(
                        maps, shifts[key], self.image_pad, out[key]):
                    continue
                # gather the 2-byte values as integers (torch's CPU gather is slower on float16), then convert
                # the shifted maps to float32 once
                shifted = random_shift(maps.view(torch.int16), shifts[key], self.image_pad,
                                       out=self._workspace(name, "int16", maps.shape, torch.int16, maps.device))
                out[key].copy_(shifted.view(torch.float16))
            else:
                out[key] = random_shift(maps.float(), shifts[key], self.image_pad,
                                        out=self._workspace(name, "float32", maps.shape, torch.float32, maps.device))
        return out

    def _workspace(self, name: str | None, kind: str, shape: torch.Size, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
        """Memory of ``shape`` kept under ``name`` (``None``: fresh memory each time) and handed out again."""
        if name is None:
            return torch.empty(shape, dtype=dtype, device=device)
        kept = self._workspaces.get((name, kind))
        if kept is None or kept.shape != shape or kept.dtype != dtype or kept.device != device:
            kept = self._workspaces[(name, kind)] = torch.empty(shape, dtype=dtype, device=device)
        return kept

    def forward(self, obs: Mapping[str, torch.Tensor],
                shifts: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Features of a batch; ``shifts[key] (B, 2)`` applies the random-shift augmentation to that image key."""
        state = self._state_features(obs)
        parts = [] if state is None else [state]
        parts += [self.cnns[key](self._image_input(obs, key, shifts)) for key in self.image_keys]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _state_features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        parts = [obs[k].reshape(obs[k].shape[0], -1).float() for k in self.state_keys]
        if not parts:
            return None
        state = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        state = (state - self.state_offset) * self.state_scale
        return torch.clamp(state, -self.state_clip, self.state_clip)

    def _image_input(self, obs: Mapping[str, torch.Tensor], key: str,
                     shifts: Mapping[str, torch.Tensor] | None) -> torch.Tensor:
        """What the key's head reads: the DrQ CNN's float image, or the backbone's feature map (run here on a raw
        frame, read from the batch when cached), shifted when ``shifts`` are given."""
        images = obs[key]
        if self.frame_encoder is None:
            images = images.permute(0, 3, 1, 2).float().div_(255.0)
        elif images.dtype == torch.uint8:  # a raw frame: run the frozen backbone
            images = self.frame_encoder(images)
        else:  # its cached feature map (B, C, h, w)
            images = images.float()
        if shifts is not None:
            images = random_shift(images, shifts[key], self.image_pad)
        return images


def encode_many(encoders: Sequence[ObservationEncoder], obs: Mapping[str, torch.Tensor],
                shifts: Mapping[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """``[encoder(obs, shifts) for encoder in encoders]`` for copies of one encoder (the online and the target
    critic's). With a frozen backbone each image key's feature map is read once: every copy's spatial embedding
    pools it in the same product (:func:`~hilrl.policies.pretrained.spatial_embeddings`), and a raw frame goes
    through the backbone once."""
    first = encoders[0]
    if len(encoders) == 1 or first.frame_encoder is None:
        return [encoder(obs, shifts) for encoder in encoders]
    parts = [[] if state is None else [state] for state in (e._state_features(obs) for e in encoders)]
    for key in first.image_keys:
        maps = first._image_input(obs, key, shifts)
        for part, features in zip(parts, spatial_embeddings([e.cnns[key] for e in encoders], maps)):
            part.append(features)
    return [part[0] if len(part) == 1 else torch.cat(part, dim=-1) for part in parts]
