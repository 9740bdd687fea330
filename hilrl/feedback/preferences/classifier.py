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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

    def fit(self, frames: np.ndarray, success: np.ndarray, epochs: int = 30, batch_size: int = 64) -> float:
        """Train on ``(n, H, W, 3)`` frames with bool labels (classes balanced by weighting); returns the last loss."""
        success = np.asarray(success, bool)
        if success.all() or not success.any():
            raise HilrlError("the success classifier needs frames of both classes (success and failure)")
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
        return float(loss)

    @torch.no_grad()
    def probability(self, frames: np.ndarray) -> np.ndarray:
        out = [torch.sigmoid(self.encoder(frames[i:i + 512]).squeeze(-1)) for i in range(0, len(frames), 512)]
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def save(self, path: str | Path) -> None:
        torch.save({"encoder": self.encoder.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path) -> SuccessClassifier:
        model = cls()
        model.encoder.load_state_dict(torch.load(path)["encoder"])
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


class SuccessClassifierSource:
    """Reward 1 where the classifier's P(success) of the step's resulting frame passes ``threshold``, else 0.

    :param classifier: a fitted :class:`SuccessClassifier`.
    :param camera: the observation key of the frames.
    :param threshold: probability above which a frame counts as success (HIL-SERL: 0.5-0.9 per task).
    """

    def __init__(self, classifier: SuccessClassifier, camera: str = "front", threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise HilrlError(f"success classifier threshold {threshold} must be in (0, 1)")
        self.classifier, self.camera, self.threshold, self.version = classifier, camera, threshold, 0

    def __call__(self, batch) -> np.ndarray:
        if self.camera not in batch.next_obs:
            raise HilrlError(f"the success classifier reads camera {self.camera!r}, which the run does not observe; "
                             "add it to env.cameras")
        return (self.classifier.probability(batch.next_obs[self.camera]) > self.threshold).astype(np.float32)


def make_classifier_source(config: Any, context: Any) -> SuccessClassifierSource:
    """``reward: {source: success_classifier, kwargs: {model: PATH, camera: front, threshold: 0.5}}``."""
    kwargs, path = saved_model_kwargs(config, "success_classifier", {"model", "camera", "threshold"},
                                      "SuccessClassifier")
    return SuccessClassifierSource(SuccessClassifier.load(path), kwargs.get("camera", "front"),
                                   float(kwargs.get("threshold", 0.5)))
