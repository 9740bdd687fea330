"""Preallocated replay buffers (numpy ring buffers), the mixed online/demo sampler, and reward sources on them.

A batch is a dict::

    {"obs": {key: (n, ...)}, "actions": (n, A) float32, "rewards": (n,) float32,
     "next_obs": {key: (n, ...)}, "terminated": (n,) bool, "truncated": (n,) bool,
     <extra>: (n, ...), ["reward_terms": {name: (n,)}], ["env_rewards": (n,)]}

Images stay ``uint8``. ``terminated`` and ``truncated`` are kept apart: only
``terminated`` stops bootstrapping (the pitfall seen in gym-hil, which merges them).
Extras (``intervened``, ``policy_action``...) are stored per transition; their
arrays are allocated the first time a key is seen (or declared up front with ``extras``).
:data:`STEP_EXTRAS` are what the training loops store with every step: whether a person (or a
simulated one) was in control, whether the episode's next step was, the episode id and the
step's index in its episode. ``reward_terms`` are the task's named reward terms
(``info["reward_terms"]``), each a float32 column.

Rewards (door 2 of the architecture, ``docs/ARCHITECTURE.md``): a buffer stores what happened, and
the env's reward is kept as it came (:attr:`ReplayBuffer.rewards`, never overwritten). With a
:attr:`ReplayBuffer.reward_source` set, a batch's ``rewards`` are that source's instead (and the
env's travel as ``env_rewards``): each row's value is cached with the source's ``version``; a row
is computed when it is sampled after it was written (or changed: a late intervention mark), and
when the version moves every stored row is recomputed in bulk, a chunk of rows per call, before
the next batch (PEBBLE's relabelling of the whole buffer after each reward-model update).

Shared ``next_obs`` (SERL's memory-efficient buffer): consecutive steps of one stream can be
given with a bool ``own_next`` per step and ``next_obs`` rows only where it is true; every other
step's ``next_obs`` is the following step's ``obs``. The ring then stores each image once: such a
slot reads its ``next_obs`` from the next slot, which the ring overwrites only after the slot itself,
and the last step of every call must have its own (so the newest slot never points past the ring's
head). The untouched ``next_obs`` rows are never written, so their memory is never paged in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from hilrl.data.paging import untouched_zeros
from hilrl.errors import HilrlError

Batch = dict[str, Any]
_CORE = ("actions", "rewards", "terminated", "truncated")
# what the training loops store with every step (see the module docstring)
STEP_EXTRAS: dict[str, tuple[tuple[int, ...], Any]] = {
    "intervened": ((), np.bool_), "next_intervened": ((), np.bool_), "episode": ((), np.int64), "step": ((), np.int32),
}
RECOMPUTE_CHUNK = 8192  # rows per reward-source call in a bulk recompute


@dataclass
class RewardBatch:
    """What a reward source sees of ``n`` stored transitions (arrays with a leading axis ``n``).

    ``env_rewards`` is the env's reward as stored; ``reward_terms`` the task's named terms (empty when
    the task has none); ``intervened`` whether a person (or a simulated one) acted at the step and
    ``next_intervened`` whether they did at the episode's next step (filled in when that step is
    stored; false at an episode's last step); ``episode`` and ``step`` say where a row sits, so
    segment-level sources (preferences over segments) can find its neighbours. Flags a buffer does
    not store read as false, ids as -1.
    """

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    next_obs: dict[str, np.ndarray]
    terminated: np.ndarray
    truncated: np.ndarray
    env_rewards: np.ndarray
    reward_terms: dict[str, np.ndarray]
    intervened: np.ndarray
    next_intervened: np.ndarray
    episode: np.ndarray
    step: np.ndarray

    def __len__(self) -> int:
        return len(self.env_rewards)


class RewardFn(Protocol):
    """What a buffer needs of a reward source (:class:`hilrl.feedback.rewards.RewardSource`)."""

    version: int

    def __call__(self, batch: RewardBatch) -> np.ndarray: ...


class ReplayBuffer:
    """Ring buffer of transitions with ``capacity`` slots, all memory allocated up front.

    Args:
        observation_space: the env's ``Dict`` observation space; every key is stored.
        action_space: the env's ``Box`` action space.
        capacity: number of transitions kept; the oldest are overwritten.
        extras: optional ``{name: (shape, dtype)}`` of per-transition extras to allocate now.
    """

    def __init__(self, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, capacity: int,
                 extras: Mapping[str, tuple[tuple[int, ...], Any]] | None = None):
        if not isinstance(observation_space, gym.spaces.Dict):
            raise HilrlError(f"ReplayBuffer needs a gymnasium Dict observation space, got "
                             f"{type(observation_space).__name__}")
        if not isinstance(action_space, gym.spaces.Box):
            raise HilrlError(f"ReplayBuffer needs a Box action space, got {type(action_space).__name__}")
        if int(capacity) < 1:
            raise HilrlError(f"replay capacity must be a positive integer, got {capacity}")
        self.observation_space, self.action_space, self.capacity = observation_space, action_space, int(capacity)
        self.obs_shapes = {k: (tuple(s.shape), np.dtype(s.dtype)) for k, s in observation_space.spaces.items()}
        self.obs = {k: untouched_zeros((self.capacity, *shape), dtype) for k, (shape, dtype) in self.obs_shapes.items()}
        self.next_obs = {k: untouched_zeros((self.capacity, *shape), dtype)
                         for k, (shape, dtype) in self.obs_shapes.items()}
        self.actions = np.zeros((self.capacity, *action_space.shape), np.float32)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.terminated = np.zeros(self.capacity, bool)
        self.truncated = np.zeros(self.capacity, bool)
        self.next_in_obs = np.zeros(self.capacity, bool)  # slot's next_obs is obs of the next slot (shared form)
        self._any_shared = False
        self.extras: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in (extras or {}).items():
            self._allocate_extra(name, tuple(shape), np.dtype(dtype))
        self.reward_terms: dict[str, np.ndarray] = {}
        self.pos = 0
        self.size = 0
        self.next_episode = 0  # the id new_episodes hands out next
        self._reward_source: RewardFn | None = None
        self._reward_cache = np.zeros(0, np.float32)
        self._reward_stamp = np.zeros(0, np.int64)  # the source version each cached row was computed with; -1: none
        self._seen_version: int | None = None

    def __len__(self) -> int:
        return self.size

    @property
    def full(self) -> bool:
        return self.size == self.capacity

    @property
    def reward_source(self) -> RewardFn | None:
        """The source of the ``rewards`` in sampled batches; ``None``: the env's stored reward."""
        return self._reward_source

    @reward_source.setter
    def reward_source(self, source: RewardFn | None) -> None:
        if source is not None and not (callable(source) and isinstance(getattr(source, "version", None),
                                                                          (int, np.integer))):
            raise HilrlError(f"a reward source is callable on a RewardBatch and has an int 'version', got {source!r}")
        self._reward_source = source
        if source is not None and len(self._reward_cache) != self.capacity:
            self._reward_cache = np.zeros(self.capacity, np.float32)
            self._reward_stamp = np.full(self.capacity, -1, np.int64)
        self._reward_stamp[:] = -1
        self._seen_version = None

    def new_episodes(self, count: int) -> int:
        """Reserve ``count`` episode ids; returns the first (ids are consecutive and never reused)."""
        first = self.next_episode
        self.next_episode += int(count)
        return first

    def mark_next_intervened(self, slot: int, episode: int, step: int) -> bool:
        """The step after the one in ``slot`` was intervened: set its ``next_intervened``.

        The slot must still hold step ``step`` of episode ``episode`` (the ring may have overwritten it);
        returns whether it did. Its cached reward is recomputed when next sampled.
        """
        ids, steps = self.extras.get("episode"), self.extras.get("step")
        if ids is None or steps is None or "next_intervened" not in self.extras or slot >= self.size:
            return False
        if int(ids[slot]) != episode or int(steps[slot]) != step:
            return False
        self.extras["next_intervened"][slot] = True
        if len(self._reward_stamp):
            self._reward_stamp[slot] = -1
        return True

    def _allocate_extra(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if name in ("obs", "next_obs", "own_next", *_CORE):
            raise HilrlError(f"extra {name!r} clashes with a core batch key; rename it")
        self.extras[name] = np.zeros((self.capacity, *shape), dtype)

    def _check_obs(self, obs: Mapping[str, np.ndarray], n: int, what: str) -> None:
        missing = sorted(set(self.obs_shapes) - set(obs))
        if missing:
            raise HilrlError(f"{what} lacks observation keys {missing}; the buffer stores {sorted(self.obs_shapes)}")
        for key, (shape, _) in self.obs_shapes.items():
            got = np.shape(obs[key])
            if got != (n, *shape):
                raise HilrlError(f"{what}[{key!r}] has shape {got}, expected {(n, *shape)}")

    def extend(self, obs: Mapping[str, np.ndarray], actions: np.ndarray, rewards: np.ndarray,
               next_obs: Mapping[str, np.ndarray], terminated: np.ndarray, truncated: np.ndarray,
               own_next: np.ndarray | None = None, reward_terms: Mapping[str, np.ndarray] | None = None,
               **extras: np.ndarray) -> None:
        """Add ``n`` transitions given as arrays with a leading axis of length ``n``.

        ``rewards`` is the env's reward. ``own_next``: the shared ``next_obs`` form (module docstring):
        consecutive steps, ``next_obs`` holding one row per true entry, which must include the last
        step. ``reward_terms``: the task's named reward terms, one ``(n,)`` array each; once a buffer
        stores terms every call must pass the same names.
        """
        actions = np.asarray(actions, np.float32)
        n = len(actions)
        if n == 0:
            return
        if actions.shape != (n, *self.action_space.shape):
            raise HilrlError(f"actions have shape {actions.shape}, expected {(n, *self.action_space.shape)}")
        self._check_obs(obs, n, "obs")
        if own_next is not None:
            own_next = np.asarray(own_next)
            if own_next.dtype != np.bool_ or own_next.shape != (n,) or not own_next[-1]:
                raise HilrlError(f"own_next must be a bool array of shape ({n},) that is true for the last step "
                                 "(its next_obs is in no later step of this call)")
        self._check_obs(next_obs, n if own_next is None else int(own_next.sum()), "next_obs")
        columns = {"rewards": rewards, "terminated": terminated, "truncated": truncated}
        for name, values in columns.items():
            if np.shape(values) != (n,):
                raise HilrlError(f"{name} has shape {np.shape(values)}, expected ({n},)")
        for name, values in extras.items():
            values = np.asarray(values)
            if values.shape[:1] != (n,):
                raise HilrlError(f"extra {name!r} has shape {values.shape}; its first axis must be the {n} transitions")
            if name not in self.extras:
                if self.size:
                    raise HilrlError(f"extra {name!r} first appears after {self.size} transitions were stored "
                                     "without it; declare it with ReplayBuffer(..., extras=...) or always pass it")
                self._allocate_extra(name, values.shape[1:], values.dtype)
            elif values.shape[1:] != self.extras[name].shape[1:]:
                raise HilrlError(f"extra {name!r} has per-step shape {values.shape[1:]}, "
                                 f"expected {self.extras[name].shape[1:]}")
        absent = sorted(set(self.extras) - set(extras))
        if absent:
            raise HilrlError(f"transitions lack extras {absent} that this buffer stores; pass them to add()/extend()")
        terms = {name: np.asarray(values, np.float32) for name, values in (reward_terms or {}).items()}
        if set(terms) != set(self.reward_terms):
            if self.size or self.reward_terms:
                raise HilrlError(f"reward terms {sorted(terms)} differ from the {sorted(self.reward_terms)} this buffer "
                                 "stores; every step of a task carries the same info['reward_terms'] names")
            self.reward_terms = {name: np.zeros(self.capacity, np.float32) for name in terms}
        for name, values in terms.items():
            if values.shape != (n,):
                raise HilrlError(f"reward term {name!r} has shape {values.shape}, expected ({n},)")
        if n > self.capacity:  # only the newest `capacity` survive
            cut = n - self.capacity
            obs = {k: v[cut:] for k, v in obs.items()}
            if own_next is None:
                next_obs = {k: v[cut:] for k, v in next_obs.items()}
            else:
                next_obs = {k: v[int(own_next[:cut].sum()):] for k, v in next_obs.items()}
                own_next = own_next[cut:]
            actions = actions[cut:]
            columns = {k: np.asarray(v)[cut:] for k, v in columns.items()}
            extras = {k: np.asarray(v)[cut:] for k, v in extras.items()}
            terms = {k: v[cut:] for k, v in terms.items()}
            n = self.capacity
        # slice copies only (an index array gathers row by row): one up to the ring's end, one from its start
        head = min(n, self.capacity - self.pos)
        parts = [(slice(self.pos, self.pos + head), slice(0, head))]
        if head < n:
            parts.append((slice(0, n - head), slice(head, n)))
        for ring, rows in parts:
            for key in self.obs_shapes:
                self.obs[key][ring] = obs[key][rows]
                if own_next is None:
                    self.next_obs[key][ring] = next_obs[key][rows]
            self.next_in_obs[ring] = False if own_next is None else ~own_next[rows]
            self.actions[ring] = actions[rows]
            self.rewards[ring] = np.asarray(columns["rewards"])[rows]
            self.terminated[ring] = np.asarray(columns["terminated"])[rows]
            self.truncated[ring] = np.asarray(columns["truncated"])[rows]
            for name, values in extras.items():
                self.extras[name][ring] = np.asarray(values)[rows]
            for name, values in terms.items():
                self.reward_terms[name][ring] = values[rows]
            if len(self._reward_stamp):
                self._reward_stamp[ring] = -1
        if own_next is not None:
            slots = (self.pos + np.flatnonzero(own_next)) % self.capacity
            for key in self.obs_shapes:
                self.next_obs[key][slots] = next_obs[key]
            self._any_shared = True
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float,
            next_obs: Mapping[str, np.ndarray], terminated: bool, truncated: bool,
            reward_terms: Mapping[str, float] | None = None, **extras: Any) -> None:
        """Add one transition."""
        self.extend({k: np.asarray(v)[None] for k, v in obs.items()}, np.asarray(action, np.float32)[None],
                    np.array([reward], np.float32), {k: np.asarray(v)[None] for k, v in next_obs.items()},
                    np.array([terminated], bool), np.array([truncated], bool),
                    reward_terms={k: np.array([v], np.float32) for k, v in (reward_terms or {}).items()},
                    **{k: np.asarray(v)[None] for k, v in extras.items()})

    def gather(self, idx: np.ndarray) -> Batch:
        """The transitions at slot indices ``idx`` (any shape; the batch axis is ``idx.ravel()``)."""
        idx = np.asarray(idx).ravel()
        batch: Batch = {
            "obs": {k: v[idx] for k, v in self.obs.items()},
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "next_obs": self._next_obs_at(idx),
            "terminated": self.terminated[idx],
            "truncated": self.truncated[idx],
        }
        batch.update({k: v[idx] for k, v in self.extras.items()})
        if self.reward_terms:
            batch["reward_terms"] = {k: v[idx] for k, v in self.reward_terms.items()}
        if self._reward_source is not None:
            batch["env_rewards"] = batch["rewards"]
            batch["rewards"] = self.rewards_at(idx)
        return batch

    def reward_batch(self, idx: np.ndarray) -> RewardBatch:
        """The stored rows ``idx`` as a reward source sees them."""
        idx = np.asarray(idx).ravel()
        n = len(idx)

        def extra(name: str, fill: Any, dtype: Any) -> np.ndarray:
            column = self.extras.get(name)
            return column[idx] if column is not None else np.full(n, fill, dtype)

        return RewardBatch(
            obs={k: v[idx] for k, v in self.obs.items()}, actions=self.actions[idx], next_obs=self._next_obs_at(idx),
            terminated=self.terminated[idx], truncated=self.truncated[idx], env_rewards=self.rewards[idx],
            reward_terms={k: v[idx] for k, v in self.reward_terms.items()},
            intervened=extra("intervened", False, bool), next_intervened=extra("next_intervened", False, bool),
            episode=extra("episode", -1, np.int64), step=extra("step", -1, np.int32))

    def rewards_at(self, idx: np.ndarray) -> np.ndarray:
        """The reward source's rewards of rows ``idx`` (the stored env reward without a source).

        A new source version first recomputes every stored row in bulk (:data:`RECOMPUTE_CHUNK` rows per
        call); rows written since their value was cached are computed now, in one call.
        """
        idx = np.asarray(idx).ravel()
        source = self._reward_source
        if source is None:
            return self.rewards[idx]
        version = int(source.version)
        if version != self._seen_version:
            for start in range(0, self.size, RECOMPUTE_CHUNK):
                self._compute(np.arange(start, min(start + RECOMPUTE_CHUNK, self.size)), source, version)
            self._seen_version = version
        stale = idx[self._reward_stamp[idx] != version]
        if len(stale):
            self._compute(np.unique(stale), source, version)
        return self._reward_cache[idx]

    def _compute(self, rows: np.ndarray, source: RewardFn, version: int) -> None:
        values = np.asarray(source(self.reward_batch(rows)), np.float32).reshape(-1)
        if values.shape != (len(rows),):
            raise HilrlError(f"reward source {source!r} returned {values.shape[0]} rewards for {len(rows)} rows; it "
                             "must return one float per row of the RewardBatch")
        if not np.isfinite(values).all():
            raise HilrlError(f"reward source {source!r} returned NaN or inf rewards; fix the source (nothing stored "
                             "was changed)")
        self._reward_cache[rows] = values
        self._reward_stamp[rows] = version

    def _next_obs_at(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        if not self._any_shared:
            return {k: v[idx] for k, v in self.next_obs.items()}
        in_obs = self.next_in_obs[idx]
        source = np.where(in_obs, (idx + 1) % self.capacity, idx)
        own = np.flatnonzero(~in_obs)
        rows = {}
        for key, obs in self.obs.items():
            rows[key] = obs[source]  # one gather; the rows with their own next_obs are replaced below
            rows[key][own] = self.next_obs[key][idx[own]]
        return rows

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """``n`` transitions drawn uniformly with replacement."""
        if self.size == 0:
            raise HilrlError("cannot sample from an empty replay buffer; add transitions (or demos) first")
        return self.gather(rng.integers(0, self.size, size=n))

    # ---- persistence -------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        """Every stored column, flattened to ``name -> array``, oldest transition first.

        ``rewards`` are the reward source's (the env's without one) and ``env_rewards`` the env's.
        """
        order = (np.arange(self.size) + (self.pos if self.full else 0)) % self.capacity
        arrays = {f"obs/{k}": v[order] for k, v in self.obs.items()}
        arrays.update({f"next_obs/{k}": v for k, v in self._next_obs_at(order).items()})
        arrays.update({name: getattr(self, name)[order] for name in _CORE})
        arrays.update({f"extras/{k}": v[order] for k, v in self.extras.items()})
        arrays.update({f"reward_terms/{k}": v[order] for k, v in self.reward_terms.items()})
        arrays["next_episode"] = np.array(self.next_episode, np.int64)
        if self._reward_source is not None:  # what the learner trains on, beside what the env gave
            arrays["env_rewards"] = arrays["rewards"]
            arrays["rewards"] = self.rewards_at(order) if len(order) else arrays["rewards"]
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write the stored transitions to ``.npz`` or ``.h5``/``.hdf5`` (by suffix), via a temp file + rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        arrays = self._arrays()
        if path.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{k.replace("/", "::"): v for k, v in arrays.items()})
        elif path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = "hilrl.replay.v1"
                for key, values in arrays.items():
                    f.create_dataset(key, data=values)
        else:
            raise HilrlError(f"{path}: replay buffers are saved as .npz, .h5 or .hdf5; change the file suffix")
        os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Replace this buffer's contents with a file written by :meth:`save` (spaces must match)."""
        path = Path(path)
        if not path.is_file():
            raise HilrlError(f"{path}: no such replay buffer file")
        if path.suffix == ".npz":
            with np.load(path) as f:
                arrays = {k.replace("::", "/"): f[k] for k in f.files}
        elif path.suffix in (".h5", ".hdf5"):
            import h5py

            arrays = {}
            with h5py.File(path, "r") as f:
                f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset)
                             else None)
        else:
            raise HilrlError(f"{path}: expected a .npz, .h5 or .hdf5 replay buffer file")
        if "actions" not in arrays:
            raise HilrlError(f"{path}: not a hilrl replay buffer (no 'actions')")
        obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
        next_obs = {k[9:]: v for k, v in arrays.items() if k.startswith("next_obs/")}
        extras = {k[7:]: v for k, v in arrays.items() if k.startswith("extras/")}
        terms = {k[13:]: v for k, v in arrays.items() if k.startswith("reward_terms/")}
        if set(obs) != set(self.obs_shapes):
            raise HilrlError(f"{path}: stores observation keys {sorted(obs)} but this buffer's space has "
                             f"{sorted(self.obs_shapes)}; build the buffer with the same observation space")
        self.extras, self.reward_terms = {}, {}
        self.pos = self.size = 0
        # the env's reward is what a buffer stores; `rewards` in a file is what a reward source gave, if any
        env_rewards = arrays.get("env_rewards", arrays["rewards"])
        self.extend(obs, arrays["actions"], env_rewards, next_obs, arrays["terminated"],
                    arrays["truncated"], reward_terms=terms, **extras)
        episodes = extras.get("episode")
        stored_next = int(arrays["next_episode"]) if "next_episode" in arrays else 0
        self.next_episode = max(stored_next, int(episodes.max()) + 1 if episodes is not None and len(episodes) else 0)
        self.reward_source = self._reward_source  # every cached reward is stale now


@dataclass
class Replay:
    """A run's two buffers: ``online`` (every step the policy or a person took) and ``demo`` (demonstrations,
    and with HIL-SERL's storage the intervention steps too), with one reward source over both.

    Both store :data:`STEP_EXTRAS` (``online`` also ``policy_action``, what the policy proposed when a
    person acted instead). Recorded demos get negative episode ids (``-1, -2, ...``), online episodes
    ids from 0, and intervention steps copied to the demo buffer keep their online ids, so a row's
    ``(episode, step)`` names one step of the run wherever it is stored.
    """

    online: ReplayBuffer
    demo: ReplayBuffer

    @classmethod
    def create(cls, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, capacity: int) -> Replay:
        online = ReplayBuffer(observation_space, action_space, capacity,
                              extras={**STEP_EXTRAS, "policy_action": (action_space.shape, np.float32)})
        return cls(online, ReplayBuffer(observation_space, action_space, capacity, extras=STEP_EXTRAS))

    def set_reward_source(self, source: RewardFn | None) -> None:
        self.online.reward_source = source
        self.demo.reward_source = source

    def add_demos(self, episodes: Any) -> None:
        """Append recorded :class:`~hilrl.data.episode.Episode` s to the demo buffer, each with its own id."""
        for episode in episodes:
            n = len(episode)
            episode_id = -1 - self.demo.new_episodes(1)
            self.demo.extend(episode.obs, episode.actions, episode.rewards, episode.next_obs, episode.terminated,
                             episode.truncated, reward_terms=episode.reward_terms or None,
                             intervened=np.zeros(n, bool), next_intervened=np.zeros(n, bool),
                             episode=np.full(n, episode_id, np.int64), step=np.arange(n, dtype=np.int32))

    def save(self, folder: str | os.PathLike, tag: int) -> dict[str, str]:
        """Write both buffers as ``replay_{online,demo}_{tag}.npz`` in ``folder``; returns the file names."""
        names = {"online": f"replay_online_{tag}.npz", "demo": f"replay_demo_{tag}.npz"}
        self.online.save(Path(folder) / names["online"])
        self.demo.save(Path(folder) / names["demo"])
        return names

    def load(self, folder: str | os.PathLike, names: Mapping[str, str]) -> None:
        self.online.load(Path(folder) / names["online"])
        self.demo.load(Path(folder) / names["demo"])


def shared_next_rows(obs: Mapping[str, np.ndarray], next_obs: Mapping[str, np.ndarray], own_next: np.ndarray,
                     index: np.ndarray) -> dict[str, np.ndarray]:
    """Full ``next_obs`` rows ``index`` of steps given in the shared form (module docstring)."""
    index = np.asarray(index, np.int64)
    own = own_next[index]
    own_row = (np.cumsum(own_next) - 1)[index[own]]  # where each own step's row sits in next_obs
    rows = {}
    for key, values in obs.items():
        rows[key] = values[np.minimum(index + 1, len(values) - 1)]
        rows[key][own] = next_obs[key][own_row]
    return rows


def slice_shared(obs: Mapping[str, np.ndarray], next_obs: Mapping[str, np.ndarray], own_next: np.ndarray,
                 rows: slice) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(next_obs, own_next)`` of steps ``rows`` (a slice with start and stop) in the shared form.

    The slice's last step gets its own row when its ``next_obs`` was the step after the slice.
    """
    first = int(own_next[:rows.start].sum())
    own = own_next[rows].copy()
    cut = {k: v[first:first + int(own.sum())] for k, v in next_obs.items()}
    if not own[-1]:
        own[-1] = True
        cut = {k: np.concatenate([v, obs[k][rows.stop:rows.stop + 1]]) for k, v in cut.items()}
    return cut, own


def demo_rows(online_size: int, demo_size: int, batch_size: int, demo_fraction: float) -> int:
    """Demo transitions in each :func:`mixed_sample` minibatch; they are its last rows."""
    if demo_size == 0:
        return 0
    return batch_size if online_size == 0 else int(round(batch_size * demo_fraction))


def mixed_sample(online: ReplayBuffer, demo: ReplayBuffer | None, batch_size: int, rng: np.random.Generator,
                 demo_fraction: float = 0.5, num_slices: int = 1) -> Batch:
    """RLPD/HIL-SERL symmetric sampling: ``num_slices`` consecutive minibatches of ``batch_size``.

    Each minibatch holds ``round(batch_size * demo_fraction)`` demo transitions
    and the rest online ones, so every UTD slice keeps the ratio. With an empty
    (or no) demo buffer everything comes from the online buffer; with an empty
    online buffer everything comes from the demos. Only extras stored by both
    buffers are returned.
    """
    if not 0.0 <= demo_fraction <= 1.0:
        raise HilrlError(f"demo_fraction must be within [0, 1], got {demo_fraction}")
    n_demo = demo_rows(len(online), 0 if demo is None else len(demo), batch_size, demo_fraction)
    n_online = batch_size - n_demo
    if n_online and len(online) == 0:
        raise HilrlError("cannot sample: both the online and the demo replay buffers are empty")
    parts = []
    if n_online:
        parts.append(online.gather(rng.integers(0, len(online), size=(num_slices, n_online))))
    if n_demo:
        parts.append(demo.gather(rng.integers(0, len(demo), size=(num_slices, n_demo))))  # type: ignore[union-attr]
    if len(parts) == 1:
        return parts[0]
    return _interleave(parts[0], parts[1], num_slices)


def _interleave(a: Any, b: Any, num_slices: int) -> Any:
    """Concatenate per slice: slice k of the result is slice k of ``a`` followed by slice k of ``b``."""
    if isinstance(a, dict):
        return {k: _interleave(a[k], b[k], num_slices) for k in a if k in b}
    a = a.reshape(num_slices, -1, *a.shape[1:])
    b = b.reshape(num_slices, -1, *b.shape[1:])
    return np.concatenate([a, b], axis=1).reshape(-1, *a.shape[2:])
