"""The image success classifier of HIL-SERL as the run's sparse reward, on the frozen pretrained features.

Luo et al. 2024, "Precise and Dexterous Robotic Manipulation via Human-in-the-Loop Reinforcement
Learning" (HIL-SERL; rail-berkeley/hil-serl, ``serl_launcher/networks/reward_classifier.py`` and
``examples/train_reward_classifier.py``): a binary classifier on the cameras' frames, on the same frozen
ImageNet-pretrained backbone as the policy, with a learned spatial embedding per camera and a small head
(Dense 256, dropout 0.1, LayerNorm, ReLU, Dense 1); trained from frames the person marks success or failure
while teleoperating (``examples/record_success_fail.py``); the env's reward is 1 when its probability passes a
threshold (0.7 in most of their task configs), and the episode ends there (``MultiCameraBinaryRewardClassifier
Wrapper``: ``done = done or reward``). A false positive seen while training is added to the failures and the
classifier trained again.

Here the backbone is the policy's frozen EfficientNet-Lite0 (:class:`hilrl.policies.pretrained.FrozenImageEncoder`,
the ``pixels`` extra): ``backbone: efficientnet_lite0``, the only one. (The frozen random conv net of earlier
versions is gone: it was a stand-in until a pretrained backbone installed offline; a model file saved with it is
refused with the refit to do.) Each frame is encoded once: the classifier reads the fp16 feature maps the run
already caches in its observations (``algo.images.encoder: efficientnet_lite0``) and encodes raw frames only
where it is given frames (a run on another encoder, recordings, labels); its training set is kept as features.

Where the labels come from (:func:`labelled_frames`): a recording (``hilrl record``): a person's verdict (the
teleop device's success/failure buttons end the episode: its last ``success_frames`` frames are successes
after a success press, every frame a failure after a failure press) or, from a scripted recording, the env's own
success flag of each frame (as a person holding HIL-SERL's success key while the task is done); during a run,
:class:`SuccessLabels` (``RUN/success_labels/``): a person marking frames, false positives added as failures.
With ``refit_every`` > 0 the source looks there every that many env steps and, when new labels came, trains the
classifier further on its training set plus every label so far, and bumps its ``version`` so every stored row's
reward is recomputed in bulk (as the Bradley–Terry source does).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hilrl.errors import HilrlError
from hilrl.feedback.preferences import saved_model_kwargs

BACKBONES = ("efficientnet_lite0",)
ENCODE_CHUNK = 256  # frames per backbone call


class SuccessHead(nn.Module):
    """HIL-SERL's classifier head: a learned spatial embedding per camera (``SpatialEmbedding``), concatenated,
    then Dense ``hidden_dim``, dropout 0.1, LayerNorm, ReLU, Dense 1 (the logit of success)."""

    def __init__(self, shapes: Mapping[str, tuple[int, int, int]], latent_dim: int, hidden_dim: int) -> None:
        from hilrl.policies.pretrained import SpatialEmbedding

        super().__init__()
        self.cameras = tuple(shapes)
        self.embed = nn.ModuleDict({c: SpatialEmbedding(*shapes[c], latent_dim=latent_dim) for c in self.cameras})
        self.mlp = nn.Sequential(nn.Linear(latent_dim * len(self.cameras), hidden_dim), nn.Dropout(0.1),
                                 nn.LayerNorm(hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([self.embed[c](features[c]) for c in self.cameras], -1)).squeeze(-1)


class SuccessClassifier:
    """P(success | the cameras' frames): the frozen pretrained backbone's features and a trainable head.

    Inputs are a map ``{camera: array}`` (a single array stands for the only camera), each ``(n, H, W, 3)`` uint8
    frames or ``(n, C, h, w)`` feature maps of the backbone (what a run on ``algo.images.encoder:
    efficientnet_lite0`` stores), so cached features are never encoded again.

    :param cameras: the observation keys it reads (HIL-SERL: the cameras it was trained on, e.g. front and wrist).
    :param backbone: the frozen feature extractor, one of :data:`BACKBONES`.
    :param latent_dim: the spatial embedding's output per camera.
    :param hidden_dim: the head's hidden layer (HIL-SERL: 256).
    :param lr: Adam learning rate.
    :param seed: initialisation and batch order.
    """

    def __init__(self, cameras: Sequence[str] = ("front",), backbone: str = "efficientnet_lite0",
                 latent_dim: int = 64, hidden_dim: int = 256, lr: float = 3e-4, seed: int = 0) -> None:
        if backbone not in BACKBONES:
            raise HilrlError(f"success classifier backbone {backbone!r}: use one of {', '.join(BACKBONES)}")
        if isinstance(cameras, str) or not cameras:
            raise HilrlError(f"success classifier cameras {cameras!r}: give a list of camera keys, e.g. [front]")
        from hilrl.policies.pretrained import FrozenImageEncoder

        self.cameras, self.backbone = tuple(cameras), backbone
        self.latent_dim, self.hidden_dim, self.lr, self.seed = latent_dim, hidden_dim, lr, seed
        self.encoder = FrozenImageEncoder()
        self.rng = np.random.default_rng(seed)
        self.head: SuccessHead | None = None  # built on the first fit, when the feature shapes are known
        self.shapes: dict[str, tuple[int, ...]] = {}  # (C, h, w) per camera, once built
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_features: dict[str, np.ndarray] | None = None  # what it was fitted on (fp16), for refits
        self.train_success: np.ndarray | None = None

    def features(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """The fp16 feature maps of ``inputs`` (class docstring): frames are encoded, feature maps passed on."""
        if not isinstance(inputs, Mapping):
            if len(self.cameras) > 1:
                raise HilrlError(f"this success classifier reads cameras {list(self.cameras)}: give a map "
                                 "{camera: frames}")
            inputs = {self.cameras[0]: inputs}
        out = {}
        for camera in self.cameras:
            if camera not in inputs:
                raise HilrlError(f"the success classifier reads camera {camera!r}, which is not observed here (have "
                                 f"{sorted(inputs)}); add it to env.cameras")
            x = np.asarray(inputs[camera])
            if x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3:
                x = self.encoder.encode(x, chunk=ENCODE_CHUNK)
            elif x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
                raise HilrlError(f"success classifier: camera {camera!r} holds {x.dtype} {x.shape}; give uint8 "
                                 "(n, H, W, 3) frames or (n, C, h, w) feature maps of its backbone")
            if self.shapes and x.shape[1:] != self.shapes[camera]:
                raise HilrlError(f"success classifier: camera {camera!r} gives features {x.shape[1:]}, it was trained "
                                 f"on {self.shapes[camera]}: use the image size it was trained with")
            out[camera] = x.astype(np.float16, copy=False)
        return out

    def _build(self, shapes: Mapping[str, tuple[int, int, int]]) -> None:
        self.shapes = {c: tuple(shapes[c]) for c in self.cameras}
        torch.manual_seed(self.seed)
        self.head = SuccessHead(shapes, self.latent_dim, self.hidden_dim)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=self.lr)

    def fit(self, inputs: Mapping[str, np.ndarray] | np.ndarray, success: np.ndarray, epochs: int = 30,
            batch_size: int = 128) -> float:
        """Train on ``inputs`` (frames or feature maps) with bool labels, classes balanced by weighting; the first
        fit builds the head, a later one trains it further. Returns the last batch's loss."""
        success = np.asarray(success, bool).reshape(-1)
        if success.all() or not success.any():
            raise HilrlError("the success classifier needs frames of both classes (success and failure); "
                             f"got {int(success.sum())} successes of {len(success)}")
        features = self.features(inputs)
        self.train_features, self.train_success = features, success
        if self.head is None:
            self._build({c: v.shape[1:] for c, v in features.items()})
        tensors = {c: torch.as_tensor(v) for c, v in features.items()}
        pos_weight = torch.tensor((~success).sum() / success.sum(), dtype=torch.float32)
        target = torch.as_tensor(success, dtype=torch.float32)
        self.head.train()
        loss = torch.zeros(())
        for _ in range(epochs):
            order = torch.as_tensor(self.rng.permutation(len(success)))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = self.head({c: v[idx].float() for c, v in tensors.items()})
                loss = nn.functional.binary_cross_entropy_with_logits(logits, target[idx], pos_weight=pos_weight)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        self.head.eval()
        return float(loss.detach())

    @torch.no_grad()
    def probability(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """P(success) of each row of ``inputs``, float32 ``(n,)``."""
        if self.head is None:
            raise HilrlError("the success classifier is not fitted yet: call fit (or load a saved one)")
        features = self.features(inputs)
        n = len(next(iter(features.values())))
        out = [torch.sigmoid(self.head({c: torch.as_tensor(v[i:i + 1024]).float() for c, v in features.items()}))
               for i in range(0, n, 1024)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def save(self, path: str | Path) -> None:
        """The head, its settings and its training set (features and labels: a refit trains on them plus new
        labels), written to a temp file and renamed."""
        if self.head is None:
            raise HilrlError("the success classifier is not fitted yet: nothing to save")
        state = {"backbone": self.backbone, "cameras": list(self.cameras), "latent_dim": self.latent_dim,
                 "hidden_dim": self.hidden_dim, "lr": self.lr, "seed": self.seed, "head": self.head.state_dict(),
                 "features": {c: torch.as_tensor(v) for c, v in self.train_features.items()},
                 "success": torch.as_tensor(self.train_success)}
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> SuccessClassifier:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "backbone" not in state:
            raise HilrlError(f"{path}: a success classifier saved on the old frozen random conv net; fit it again on "
                             "its frames (SuccessClassifier(...).fit, or reward.kwargs.recording) to get one on the "
                             "pretrained backbone")
        model = cls(state["cameras"], state["backbone"], state["latent_dim"], state["hidden_dim"], state["lr"],
                    state["seed"])
        model.train_features = {c: v.numpy() for c, v in state["features"].items()}
        model.train_success = state["success"].numpy().astype(bool)
        model._build({c: v.shape[1:] for c, v in model.train_features.items()})
        model.head.load_state_dict(state["head"])
        model.head.eval()
        return model


def labelled_frames(episodes: Sequence[Any], cameras: str | Sequence[str] = ("front",),
                    success_frames: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frames ``{camera: (n, H, W, 3)}`` (each step's resulting frame, ``next_obs``) and their success labels from
    recorded episodes (:class:`hilrl.data.episode.Episode`, e.g. a ``hilrl record`` file).

    A person's verdict (``attrs["label"] == "human"``: the success/failure buttons ended the episode) labels the
    last ``success_frames`` frames of a success press successes and every other frame a failure; otherwise the
    env's success flag of each step (the ``is_success`` extra a scripted recording keeps) labels each frame; an
    episode with neither counts its last ``success_frames`` frames as successes when it ended ``terminated``.
    """
    cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
    frames: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    labels = []
    for episode in episodes:
        missing = [c for c in cameras if c not in episode.next_obs]
        if missing:
            raise HilrlError(f"recorded episode {episode.attrs.get('name', '')!r} has no frames of {missing} (it has "
                             f"{sorted(episode.next_obs)}); record with env.cameras listing them")
        n = len(episode.actions)
        flags = episode.extras.get("is_success")
        if episode.attrs.get("label") == "human" or flags is None:
            success = np.zeros(n, bool)
            if episode.success if episode.attrs.get("label") == "human" else bool(np.asarray(episode.terminated)[-1]):
                success[-success_frames:] = True
        else:
            success = np.asarray(flags, bool).reshape(-1)
        for c in cameras:
            frames[c].append(np.asarray(episode.next_obs[c]))
        labels.append(success)
    if not labels:
        raise HilrlError("no recorded episodes to label")
    return {c: np.concatenate(v) for c, v in frames.items()}, np.concatenate(labels)


def recorded_labels(paths: str | os.PathLike | Sequence[str | os.PathLike], cameras: Sequence[str],
                    success_frames: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """:func:`labelled_frames` of every episode of one or more ``hilrl record`` files."""
    from hilrl.data.hdf5 import DemoFile

    episodes = []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        if not Path(path).is_file():
            raise HilrlError(f"success classifier recording {path}: no such file; make it with hilrl record CONFIG "
                             f"--out {path} (a person's success/failure buttons, or the scripted expert)")
        with DemoFile(path) as demos:
            episodes.extend(demos)
    return labelled_frames(episodes, cameras, success_frames)


class SuccessLabels:
    """Frames labelled success or failure during a run, append-only under ``RUN/success_labels/``.

    Each :meth:`add` writes one ``.npz`` (frames, success flags, who, when) to a temp file, fsyncs and
    renames it, so a label batch is either whole on disk or absent; readers never see a half-written one.
    ``frames`` is one camera's ``(n, H, W, 3)`` array, or a map ``{camera: frames}`` for a classifier on several.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> SuccessLabels:
        return cls(Path(run_dir) / "success_labels")

    def add(self, frames: np.ndarray | Mapping[str, np.ndarray], success: np.ndarray, who: str) -> Path:
        views = dict(frames) if isinstance(frames, Mapping) else {"": frames}
        views = {k: np.asarray(v, np.uint8) for k, v in views.items()}
        success = np.asarray(success, bool).reshape(-1)
        for key, value in views.items():
            if value.ndim != 4 or value.shape[-1] != 3 or len(value) != len(success) or not len(value):
                raise HilrlError(f"success labels: give (n, H, W, 3) uint8 frames (per camera) and n success flags; "
                                 f"got frames {key or ''}{value.shape} and {success.shape[0]} flags")
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=self.folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"frames{'/' + k if k else ''}": v for k, v in views.items()}, success=success,
                     who=np.array(who), at=np.array(time.time()))
            f.flush()
            os.fsync(f.fileno())
        path = self.folder / f"{time.time_ns():020d}_{os.getpid()}.npz"
        os.replace(tmp, path)
        return path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz"))

    def load(self, files: list[Path] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``({camera: frames}, success)`` of every label (key ``""``: a batch given as one camera's array)."""
        frames: dict[str, list[np.ndarray]] = {}
        success = []
        for path in files if files is not None else self.files():
            with np.load(path) as f:
                for name in f.files:
                    if name == "frames" or name.startswith("frames/"):
                        frames.setdefault(name[len("frames/"):], []).append(f[name])
                success.append(f["success"])
        return {k: np.concatenate(v) for k, v in frames.items()}, (np.concatenate(success) if success
                                                                   else np.zeros(0, bool))


class EndOnSuccess(gym.Wrapper):
    """End the episode (``terminated``) where the success classifier is confident, as HIL-SERL's classifier wrapper
    does on the robot (``done = done or reward``); ``info["classifier_success"]`` marks those steps. ``info
    ["is_success"]`` stays the env's own (in simulation: the truth the success figures count)."""

    def __init__(self, env: gym.Env, source: SuccessClassifierSource) -> None:
        super().__init__(env)
        self.source = source

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.source.success({k: np.asarray(v)[None] for k, v in obs.items()})[0]:
            terminated, info = True, {**info, "classifier_success": True}
        return obs, reward, terminated, truncated, info


class SuccessClassifierSource:
    """Reward 1 where the classifier's P(success) of the step's resulting frames passes ``threshold``, else 0.

    :param classifier: a fitted :class:`SuccessClassifier`.
    :param threshold: probability above which frames count as success (HIL-SERL: 0.7 in most task configs).
    :param end_episodes: the training env ends an episode at a frame counted success (:meth:`wrap_env`).
    :param labels: the run's :class:`SuccessLabels`; None = never refit.
    :param refit_every: env steps between looks at the labels (0 = never refit).
    :param epochs: passes over the grown training set per refit.
    :param save_to: where each refit saves the classifier (a resumed run loads it), or None.
    """

    def __init__(self, classifier: SuccessClassifier, threshold: float = 0.5, end_episodes: bool = True,
                 labels: SuccessLabels | None = None, refit_every: int = 0, epochs: int = 10,
                 save_to: str | Path | None = None) -> None:
        if not 0.0 < threshold < 1.0:
            raise HilrlError(f"success classifier threshold {threshold} must be in (0, 1)")
        self.classifier, self.threshold, self.end_episodes, self.version = classifier, threshold, end_episodes, 0
        self.labels, self.refit_every, self.epochs, self.save_to = labels, refit_every, epochs, save_to
        self.base = (classifier.train_features, classifier.train_success)  # what it was fitted on beforehand
        self.fitted_files = 0

    def success(self, observations: Mapping[str, np.ndarray]) -> np.ndarray:
        """Whether each row of ``observations`` (frames or cached features) is counted a success."""
        return self.classifier.probability(observations) > self.threshold

    def __call__(self, batch) -> np.ndarray:
        return self.success(batch.next_obs).astype(np.float32)

    def wrap_env(self, env: gym.Env) -> gym.Env:
        """The training env, ending episodes on a confident success (:class:`EndOnSuccess`) with ``end_episodes``."""
        return EndOnSuccess(env, self) if self.end_episodes else env

    def after_step(self, transition: Any, replay: Any, env_steps: int) -> dict[str, float] | None:
        if self.labels is None or not self.refit_every or env_steps % self.refit_every:
            return None
        files = self.labels.files()
        if len(files) == self.fitted_files:
            return None
        frames, success = self.labels.load(files)
        if "" in frames:  # a batch given as one camera's array: the classifier's only camera
            frames = {self.classifier.cameras[0]: frames.pop(""), **frames}
        features = self.classifier.features(frames)
        if self.base[0] is not None:  # the training set it started from plus every label so far
            features = {c: np.concatenate([self.base[0][c], features[c]]) for c in features}
            success = np.concatenate([self.base[1], success])
        if success.all() or not success.any():
            return None  # one class only so far: wait for the other
        loss = self.classifier.fit(features, success, epochs=self.epochs)
        self.fitted_files = len(files)
        self.version += 1
        if self.save_to is not None:
            self.classifier.save(self.save_to)
        return {"labelled_frames": float(len(success)), "fit_loss": loss, "version": float(self.version)}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return (f"SuccessClassifierSource(cameras={list(self.classifier.cameras)}, threshold={self.threshold}, "
                f"version={self.version})")


SOURCE_KWARGS = {"model", "recording", "cameras", "camera", "threshold", "end_episodes", "success_frames",
                 "refit_every", "epochs", "fit_epochs", "seed"}


def make_classifier_source(config: Any, context: Any) -> SuccessClassifierSource:
    """``reward: {source: success_classifier, kwargs: {...}}``: the classifier from ``model: PATH`` (a saved
    :class:`SuccessClassifier`) or fitted at the run's start on ``recording: PATH`` (a ``hilrl record`` file, or a
    list of them; :func:`labelled_frames`, ``success_frames``, ``fit_epochs`` (50), ``seed``) on ``cameras``
    (default ``[front]``), saved as ``RUN/success_classifier.pt`` (a resumed run loads it). ``threshold`` (0.5),
    ``end_episodes`` (true: the training env ends an episode at a confident success); with ``refit_every`` > 0
    (default 0: never) it refits on the run's :class:`SuccessLabels` for ``epochs`` (10) passes."""
    kwargs = dict(config.kwargs)
    unknown = sorted(set(kwargs) - SOURCE_KWARGS)
    if unknown or ("model" in kwargs) == ("recording" in kwargs):
        raise HilrlError(f"reward source 'success_classifier' takes kwargs {', '.join(sorted(SOURCE_KWARGS))}, with "
                         f"exactly one of model (a saved SuccessClassifier) and recording (a hilrl record file to fit "
                         f"it on); got {sorted(kwargs)}")
    run_dir = getattr(context, "run_dir", None)
    saved = Path(run_dir) / "success_classifier.pt" if run_dir is not None else None
    if "model" in kwargs:
        _, path = saved_model_kwargs(config, "success_classifier", SOURCE_KWARGS, "SuccessClassifier")
        classifier = SuccessClassifier.load(saved if saved is not None and saved.is_file() else path)
    elif saved is not None and saved.is_file():
        classifier = SuccessClassifier.load(saved)  # a resumed run: the one fitted (and refitted) in it
    else:
        cameras = kwargs.get("cameras") or [kwargs.get("camera", "front")]
        frames, success = recorded_labels(kwargs["recording"], cameras, int(kwargs.get("success_frames", 3)))
        classifier = SuccessClassifier(cameras, seed=int(kwargs.get("seed", getattr(context, "seed", 0) or 0)))
        classifier.fit(frames, success, epochs=int(kwargs.get("fit_epochs", 50)))
    refit_every = int(kwargs.get("refit_every", 0))
    labels = None
    if refit_every:
        from hilrl.feedback.preferences.source import require_run_dir

        labels = SuccessLabels.for_run(require_run_dir(context, "success_classifier"))
    if saved is not None and not saved.is_file():
        saved.parent.mkdir(parents=True, exist_ok=True)
        classifier.save(saved)
    return SuccessClassifierSource(classifier, float(kwargs.get("threshold", 0.5)),
                                   bool(kwargs.get("end_episodes", True)), labels, refit_every,
                                   int(kwargs.get("epochs", 10)), save_to=saved)
