"""Segments of stored episodes: what a query shows and what a reward model is trained on.

A segment is ``length`` consecutive steps of one stored episode (PEBBLE's ``segment``; Lee et al.
2021, rll-research/BPref), cut from a replay buffer by its ``episode`` and ``step`` columns. It
carries the reward model's inputs (``features``: the chosen observation keys of ``next_obs`` and the
action, per step), the env's (true) rewards and reward terms (for synthetic teachers and for
measuring agreement), and, when the run stores them, the MuJoCo states before each step, from which
the labelling page renders its video (:mod:`hilrl.feedback.preferences.render`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hilrl.data.buffers import RewardBatch
from hilrl.errors import HilrlError


def feature_keys(obs: Mapping[str, np.ndarray], keys: Sequence[str] | None) -> list[str]:
    """The observation keys a reward model reads: ``keys``, or every non-image key (sorted)."""
    if keys:
        missing = [k for k in keys if k not in obs]
        if missing:
            raise HilrlError(f"obs_keys {missing} are not observation keys; this env has {sorted(obs)}")
        return list(keys)
    return sorted(k for k, v in obs.items() if np.asarray(v).dtype != np.uint8)


def features(next_obs: Mapping[str, np.ndarray], actions: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """``[next_obs[k] for k in keys] + action`` per row, float32 ``(n, D)``: a step is judged by where it lands."""
    parts = [np.asarray(next_obs[k], np.float32).reshape(len(actions), -1) for k in keys]
    return np.concatenate([*parts, np.asarray(actions, np.float32)], axis=1)


def batch_features(batch: RewardBatch, keys: Sequence[str]) -> np.ndarray:
    return features(batch.next_obs, batch.actions, keys)


@dataclass
class Segment:
    """``length`` consecutive steps of one stored episode."""

    episode: int
    start: int
    features: np.ndarray  # (L, D)
    env_rewards: np.ndarray  # (L,)
    reward_terms: dict[str, np.ndarray] = field(default_factory=dict)
    states: np.ndarray | None = None  # (L, S): MuJoCo state before each step, when stored
    actions: np.ndarray | None = None
    success: bool = False
    start_obs: np.ndarray | None = None  # (D_obs,): the obs keys' values at the first step's start
    end_obs: np.ndarray | None = None  # (D_obs,): ... where the last step landed

    @property
    def true_return(self) -> float:
        return float(self.env_rewards.sum())

    def arrays(self) -> dict[str, np.ndarray]:
        """What the preference store keeps of it (:meth:`from_arrays` reads it back)."""
        out = {"episode": np.array(self.episode), "start": np.array(self.start), "features": self.features,
               "env_rewards": self.env_rewards, "success": np.array(self.success)}
        out.update({f"term:{k}": v for k, v in self.reward_terms.items()})
        if self.states is not None:
            out["states"] = self.states
        for name in ("actions", "start_obs", "end_obs"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Segment:
        return cls(int(arrays["episode"]), int(arrays["start"]), arrays["features"], arrays["env_rewards"],
                   {k[5:]: v for k, v in arrays.items() if k.startswith("term:")}, arrays.get("states"),
                   arrays.get("actions"), bool(arrays.get("success", False)), arrays.get("start_obs"),
                   arrays.get("end_obs"))


class EpisodeIndex:
    """Where each stored episode's steps sit in a buffer: ``episode id -> slots in step order``.

    :param buffer: a :class:`~hilrl.data.buffers.ReplayBuffer` storing ``episode`` and ``step`` columns.
    :param complete_only: keep only episodes whose stored steps run 0, 1, ... without a gap.
    """

    def __init__(self, buffer, complete_only: bool = True) -> None:
        if "episode" not in buffer.extras or "step" not in buffer.extras:
            raise HilrlError("cutting segments needs the buffer's episode and step columns (Replay.create stores them)")
        n = len(buffer)
        ids, steps = buffer.extras["episode"][:n], buffer.extras["step"][:n]
        order = np.lexsort((steps, ids))
        bounds = np.flatnonzero(np.diff(ids[order])) + 1
        self.slots: dict[int, np.ndarray] = {}
        for chunk in np.split(order, bounds):
            if not len(chunk):
                continue
            if complete_only and not np.array_equal(steps[chunk], np.arange(steps[chunk[0]], steps[chunk[0]] + len(chunk))):
                continue
            self.slots[int(ids[chunk[0]])] = chunk

    def long_enough(self, length: int) -> list[int]:
        return [e for e, s in self.slots.items() if len(s) >= length]


def cut_segments(buffer, count: int, length: int, keys: Sequence[str], rng: np.random.Generator,
                 states: Mapping[tuple[int, int], np.ndarray] | None = None,
                 index: EpisodeIndex | None = None) -> list[Segment]:
    """``count`` segments of ``length`` steps at uniformly random episodes and starts of ``buffer``.

    ``states`` maps ``(episode, step)`` to the MuJoCo state before that step (kept by the reward
    source while the run steps); segments get them when every step has one.
    """
    index = index or EpisodeIndex(buffer)
    episodes = index.long_enough(length)
    if not episodes:
        raise HilrlError(f"no stored episode has {length} steps yet; lower segment_length or query later")
    out = []
    for episode in rng.choice(episodes, size=count):
        slots = index.slots[int(episode)]
        start = int(rng.integers(0, len(slots) - length + 1))
        rows = slots[start:start + length]
        out.append(segment_from_rows(buffer, rows, keys, states))
    return out


def segment_from_rows(buffer, rows: np.ndarray, keys: Sequence[str],
                      states: Mapping[tuple[int, int], np.ndarray] | None = None) -> Segment:
    batch = buffer.reward_batch(rows)
    episode, start = int(batch.episode[0]), int(batch.step[0])
    seg_states = None
    if states is not None:
        found = [states.get((episode, int(s))) for s in batch.step]
        if all(s is not None for s in found):
            seg_states = np.stack(found)
    success = bool(batch.terminated[-1])
    feats = batch_features(batch, keys)
    start_obs = np.concatenate([np.asarray(batch.obs[k][0], np.float32).ravel() for k in keys])
    return Segment(episode, start, feats, batch.env_rewards.astype(np.float32),
                   {k: v.astype(np.float32) for k, v in batch.reward_terms.items()}, seg_states,
                   batch.actions.astype(np.float32), success, start_obs, feats[-1, :len(start_obs)].copy())
