"""The image success classifier of HIL-SERL as a sparse reward source.

Luo et al. 2024, "Precise and Dexterous Robotic Manipulation via Human-in-the-Loop Reinforcement
Learning" (HIL-SERL; rail-berkeley/hil-serl): a binary classifier on camera frames, trained from
frames the person marks success or failure while recording (here: the recorded episodes' outcomes,
which the teleop devices' success/failure buttons set; the last ``success_frames`` frames of a
successful episode are positives, every other frame a negative); the reward is 1 when its
probability passes ``threshold``, else 0. HIL-SERL uses a frozen pretrained ResNet-10 and a small
head; offline here the frozen backbone is :class:`~hilrl.feedback.preferences.rapl.FrameEncoder`'s
random-feature conv net, with a trainable head. False positives are fixed by adding those frames
as negatives and refitting (:meth:`SuccessClassifier.fit` on the grown set).

While a run trains, frames labelled since (a person marking success/failure, hard false positives
added as failures) are appended to the run's :class:`SuccessLabels` (``RUN/success_labels/``); with
``refit_every`` > 0 the source looks there every that many env steps and, when new labels came, trains
the classifier further on its saved training set plus every label so far, and bumps its ``version``
so every stored row's reward is recomputed in bulk (as the Bradley–Terry source does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from hilrl.errors import HilrlError
from hilrl.feedback.preferences import saved_model_kwargs


class SuccessClassifier:
    """Frozen conv features + a trainable MLP head giving P(success | frame).

    :param lr: Adam learning rate.
    :param seed: initialisation.
    """

    def __init__(self, lr: float = 1e-3, seed: int = 0) -> None:
        from hilrl.feedback.preferences.rapl import FrameEncoder

        self.encoder = FrameEncoder(dim=1, seed=seed)
        self.optimizer = torch.optim.Adam(self.encoder.head.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.train_frames: np.ndarray | None = None  # the last fit's data, saved with the model for refits
        self.train_success: np.ndarray | None = None

    def fit(self, frames: np.ndarray, success: np.ndarray, epochs: int = 30, batch_size: int = 64) -> float:
        """Train on ``(n, H, W, 3)`` frames with bool labels (classes balanced by weighting); returns the last loss."""
        success = np.asarray(success, bool)
        if success.all() or not success.any():
            raise HilrlError("the success classifier needs frames of both classes (success and failure)")
        self.train_frames, self.train_success = np.asarray(frames, np.uint8), success
        pos_weight = torch.tensor((~success).sum() / success.sum(), dtype=torch.float32)
        target = torch.as_tensor(success, dtype=torch.float32)
        loss = torch.zeros(())
        for _ in range(epochs):
            order = self.rng.permutation(len(frames))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = self.encoder(frames[idx]).squeeze(-1)
                loss = nn.functional.binary_cross_entropy_with_logits(logits, target[idx], pos_weight=pos_weight)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def probability(self, frames: np.ndarray) -> np.ndarray:
        out = [torch.sigmoid(self.encoder(frames[i:i + 512]).squeeze(-1)) for i in range(0, len(frames), 512)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def save(self, path: str | Path) -> None:
        """The weights and the last fit's frames and labels (a refit trains on them plus the new labels)."""
        data = {} if self.train_frames is None else {"frames": torch.as_tensor(self.train_frames),
                                                     "success": torch.as_tensor(self.train_success)}
        torch.save({"encoder": self.encoder.state_dict(), **data}, path)

    @classmethod
    def load(cls, path: str | Path) -> SuccessClassifier:
        model = cls()
        state = torch.load(path)
        model.encoder.load_state_dict(state["encoder"])
        if "frames" in state:
            model.train_frames, model.train_success = state["frames"].numpy(), state["success"].numpy().astype(bool)
        return model


def labelled_frames(episodes: list[Any], camera: str, success_frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Frames and labels from recorded episodes (:class:`hilrl.data.episode.Episode` with ``next_obs[camera]``):
    the last ``success_frames`` of each successful episode (ended ``terminated``) are successes."""
    frames, labels = [], []
    for episode in episodes:
        images = episode.next_obs[camera]
        success = np.zeros(len(images), bool)
        if bool(np.asarray(episode.terminated)[-1]):
            success[-success_frames:] = True
        frames.append(images)
        labels.append(success)
    return np.concatenate(frames), np.concatenate(labels)


class SuccessLabels:
    """Frames labelled success or failure during a run, append-only under ``RUN/success_labels/``.

    Each :meth:`add` writes one ``.npz`` (frames, success flags, who, when) to a temp file, fsyncs and
    renames it, so a label batch is either whole on disk or absent; readers never see a half-written one.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike) -> SuccessLabels:
        return cls(Path(run_dir) / "success_labels")

    def add(self, frames: np.ndarray, success: np.ndarray, who: str) -> Path:
        frames, success = np.asarray(frames, np.uint8), np.asarray(success, bool).reshape(-1)
        if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(success) or not len(frames):
            raise HilrlError(f"success labels: give (n, H, W, 3) uint8 frames and n success flags; got frames "
                             f"{frames.shape} and {success.shape[0]} flags")
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=self.folder)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, frames=frames, success=success, who=np.array(who), at=np.array(time.time()))
            f.flush()
            os.fsync(f.fileno())
        path = self.folder / f"{time.time_ns():020d}_{os.getpid()}.npz"
        os.replace(tmp, path)
        return path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz"))

    def load(self, files: list[Path] | None = None) -> tuple[np.ndarray, np.ndarray]:
        frames, success = [], []
        for path in files if files is not None else self.files():
            with np.load(path) as f:
                frames.append(f["frames"])
                success.append(f["success"])
        if not frames:
            return np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0, bool)
        return np.concatenate(frames), np.concatenate(success)


class SuccessClassifierSource:
    """Reward 1 where the classifier's P(success) of the step's resulting frame passes ``threshold``, else 0.

    :param classifier: a fitted :class:`SuccessClassifier`.
    :param camera: the observation key of the frames.
    :param threshold: probability above which a frame counts as success (HIL-SERL: 0.5-0.9 per task).
    :param labels: the run's :class:`SuccessLabels`; None = never refit.
    :param refit_every: env steps between looks at the labels (0 = never refit).
    :param epochs: passes over the grown training set per refit.
    """

    def __init__(self, classifier: SuccessClassifier, camera: str = "front", threshold: float = 0.5,
                 labels: SuccessLabels | None = None, refit_every: int = 0, epochs: int = 10) -> None:
        if not 0.0 < threshold < 1.0:
            raise HilrlError(f"success classifier threshold {threshold} must be in (0, 1)")
        self.classifier, self.camera, self.threshold, self.version = classifier, camera, threshold, 0
        self.labels, self.refit_every, self.epochs = labels, refit_every, epochs
        self.base = (classifier.train_frames, classifier.train_success)  # what it was fitted on beforehand
        self.fitted_files = 0

    def __call__(self, batch) -> np.ndarray:
        if self.camera not in batch.next_obs:
            raise HilrlError(f"the success classifier reads camera {self.camera!r}, which the run does not observe; "
                             "add it to env.cameras")
        return (self.classifier.probability(batch.next_obs[self.camera]) > self.threshold).astype(np.float32)

    def after_step(self, transition: Any, replay: Any, env_steps: int) -> dict[str, float] | None:
        if self.labels is None or not self.refit_every or env_steps % self.refit_every:
            return None
        files = self.labels.files()
        if len(files) == self.fitted_files:
            return None
        frames, success = self.labels.load(files)
        if self.base[0] is not None:  # the saved training set plus every label so far
            frames, success = np.concatenate([self.base[0], frames]), np.concatenate([self.base[1], success])
        if success.all() or not success.any():
            return None  # one class only so far: wait for the other
        loss = self.classifier.fit(frames, success, epochs=self.epochs)
        self.fitted_files = len(files)
        self.version += 1
        return {"labelled_frames": float(len(success)), "fit_loss": loss, "version": float(self.version)}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"SuccessClassifierSource(camera={self.camera!r}, threshold={self.threshold}, version={self.version})"


def make_classifier_source(config: Any, context: Any) -> SuccessClassifierSource:
    """``reward: {source: success_classifier, kwargs: {model: PATH, camera: front, threshold: 0.5, refit_every: 500,
    epochs: 10}}``; with ``refit_every`` > 0 it refits on the run's :class:`SuccessLabels` (0, the default: never)."""
    kwargs, path = saved_model_kwargs(config, "success_classifier",
                                      {"model", "camera", "threshold", "refit_every", "epochs"}, "SuccessClassifier")
    refit_every = int(kwargs.get("refit_every", 0))
    labels = None
    if refit_every:
        from hilrl.feedback.preferences.source import require_run_dir

        labels = SuccessLabels.for_run(require_run_dir(context, "success_classifier"))
    return SuccessClassifierSource(SuccessClassifier.load(path), kwargs.get("camera", "front"),
                                   float(kwargs.get("threshold", 0.5)), labels, refit_every,
                                   int(kwargs.get("epochs", 10)))
