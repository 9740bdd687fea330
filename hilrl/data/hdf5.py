"""robomimic-layout HDF5 demo files: append-as-you-go writer and a reader for any such file.

Layout (robomimic's, https://robomimic.github.io/docs/datasets/overview.html)::

    data/                       attrs: total (samples), env_args (JSON: env_name, type, env_kwargs)
        demo_N/                 attrs: num_samples (+ seed, success, ... of ours)
            actions (T, A)  rewards (T,)  dones (T,)  states (T, S)
            obs/<key> (T, ...)  next_obs/<key> (T, ...)      images uint8 HWC
            terminated (T,)  truncated (T,)  <extra> (T, ...)  # ours; robomimic readers ignore them
    mask/train, mask/valid      demo names (bytes)

Crash safety: an episode is written whole when it ends and the file is flushed
right after, so killing the recorder loses at most the episode in progress. We
keep h5py's default (oldest) file format on purpose: newer formats mark an open
file in its superblock and refuse to reopen it after an unclean exit.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hilrl.data.episode import Episode
from hilrl.errors import HilrlError

GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE
_CORE_DATASETS = {"actions", "rewards", "dones", "states", "obs", "next_obs", "terminated", "truncated", "reward_terms"}
_DEMO_NAME = re.compile(r"^demo_(\d+)$")


class DatasetError(HilrlError):
    """A file that is missing, unreadable or not in the robomimic layout."""


def _demo_index(name: str) -> int:
    match = _DEMO_NAME.match(name)
    return int(match.group(1)) if match else -1


def _sorted_demos(group: h5py.Group) -> list[str]:
    return sorted(group.keys(), key=lambda n: (_demo_index(n), n))


def _observations(group: h5py.Group, prefix: str = "") -> dict[str, np.ndarray]:
    """Every dataset under an ``obs`` group, keyed by its path below it: a key with ``/`` (a foreign env's
    ``pixels/front``, flattened by hilrl's env adapter) was written as nested groups and reads back whole."""
    found = {}
    for key, value in group.items():
        if isinstance(value, h5py.Group):
            found.update(_observations(value, f"{prefix}{key}/"))
        else:
            found[prefix + key] = value[()]
    return found


class DemoWriter:
    """Appends episodes to a robomimic-layout file, flushing after each one.

    Args:
        path: the ``.hdf5`` file; created, or appended to when it exists and ``append``.
        env_name: the gymnasium id the episodes came from (stored in ``env_args``).
        env_kwargs: keyword arguments that rebuild the same environment.
        env_config: the ``env`` section that made it (stored as ``env_args['hilrl_env']``): a foreign env
            (``env.package``, its adapter settings) is rebuilt from it for ``hilrl replay``.
        valid_every: every ``valid_every``-th demo goes to ``mask/valid``, the rest to
            ``mask/train`` (deterministic, so re-recording gives the same split).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        env_name: str,
        env_kwargs: dict[str, Any] | None = None,
        *,
        append: bool = False,
        valid_every: int = 10,
        env_config: dict[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.valid_every = valid_every
        self.path.parent.mkdir(parents=True, exist_ok=True)
        env_args = {"env_name": env_name, "type": GYM_ENV_TYPE, "env_kwargs": env_kwargs or {}}
        if env_config is not None:
            env_args["hilrl_env"] = env_config
        if append and self.path.exists():
            DemoFile(self.path).close()  # validates the layout before we touch it
            self._file = h5py.File(self.path, "a")
            stored = json.loads(self._file["data"].attrs["env_args"])
            if stored.get("env_name") != env_name:
                self._file.close()
                raise DatasetError(
                    f"{self.path}: holds episodes of {stored.get('env_name')!r}, not {env_name!r}; "
                    "write to another file"
                )
        else:
            self._file = h5py.File(self.path, "w")
            data = self._file.create_group("data")
            data.attrs["total"] = 0
            data.attrs["env_args"] = json.dumps(env_args)
        self._data = self._file["data"]
        self._next_index = 1 + max((_demo_index(n) for n in self._data.keys()), default=-1)
        self._file.flush()

    @property
    def num_demos(self) -> int:
        return len(self._data.keys())

    def add(self, episode: Episode) -> str:
        """Write one finished episode as ``demo_N`` and flush; returns its name."""
        name = f"demo_{self._next_index}"
        group = self._data.create_group(name)
        n = len(episode)
        group.attrs["num_samples"] = n
        for key, value in episode.attrs.items():
            group.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        group.create_dataset("actions", data=episode.actions)
        group.create_dataset("rewards", data=episode.rewards)
        group.create_dataset("dones", data=episode.dones.astype(np.int64))
        group.create_dataset("terminated", data=episode.terminated)
        group.create_dataset("truncated", data=episode.truncated)
        if episode.states is not None:
            group.create_dataset("states", data=episode.states)
        for prefix, obs in (("obs", episode.obs), ("next_obs", episode.next_obs)):
            obs_group = group.create_group(prefix)
            for key, value in obs.items():
                # images are the bulk of a file; chunk per frame and compress losslessly
                is_image = value.dtype == np.uint8 and value.ndim == 4
                obs_group.create_dataset(
                    key, data=value, **({"compression": "lzf", "chunks": (1, *value.shape[1:])} if is_image else {})
                )
        for key, value in episode.extras.items():
            if key in _CORE_DATASETS:
                raise DatasetError(f"extra {key!r} would overwrite a core dataset; rename it")
            group.create_dataset(key, data=value)
        if episode.reward_terms:  # the task's named reward terms, one dataset each under reward_terms/
            terms = group.create_group("reward_terms")
            for key, value in episode.reward_terms.items():
                terms.create_dataset(key, data=value)
        self._data.attrs["total"] = int(self._data.attrs["total"]) + n
        self._next_index += 1
        self._write_masks()
        self._file.flush()
        return name

    def _write_masks(self) -> None:
        names = _sorted_demos(self._data)
        valid = [n for n in names if _demo_index(n) % self.valid_every == self.valid_every - 1]
        train = [n for n in names if n not in set(valid)]
        mask = self._file.require_group("mask")
        for key, members in (("train", train), ("valid", valid)):
            if key in mask:
                del mask[key]
            mask.create_dataset(key, data=np.array(members, dtype="S"))

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> DemoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DemoFile:
    """Reads any robomimic-layout file (ours or robomimic's own) into :class:`Episode` objects.

    Missing optional parts are filled the way robomimic treats them: no
    ``rewards`` -> zeros, no ``dones`` -> done on the last step, no
    ``terminated``/``truncated`` -> ``terminated = dones``, ``truncated = 0``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"{self.path}: no such file; check the path (record one with `hilrl record`)")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetError(f"{self.path}: not a readable HDF5 file ({exc.__class__.__name__}); "
                               "it may be truncated or corrupted — re-record it") from None
        try:
            self._validate()
        except DatasetError:
            self._file.close()
            raise

    def _validate(self) -> None:
        if "data" not in self._file or not isinstance(self._file["data"], h5py.Group):
            raise DatasetError(f"{self.path}: not a robomimic-layout file: it has no 'data' group "
                               f"(top-level keys: {sorted(self._file.keys())})")
        for name in self.demo_names:
            demo = self._file["data"][name]
            if not isinstance(demo, h5py.Group) or "actions" not in demo:
                raise DatasetError(f"{self.path}: data/{name} has no 'actions' dataset; not a robomimic demo")
            try:
                demo["actions"].shape
            except Exception as exc:  # h5py raises assorted errors on damaged objects
                raise DatasetError(f"{self.path}: data/{name} is damaged ({exc}); re-record it") from None

    @property
    def env_args(self) -> dict[str, Any]:
        raw = self._file["data"].attrs.get("env_args")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except (TypeError, json.JSONDecodeError):
            raise DatasetError(f"{self.path}: data.attrs['env_args'] is not JSON") from None

    @property
    def demo_names(self) -> list[str]:
        return _sorted_demos(self._file["data"])

    def filter(self, key: str) -> list[str]:
        """Demo names listed under ``mask/<key>`` (e.g. ``train``/``valid``)."""
        if "mask" not in self._file or key not in self._file["mask"]:
            available = sorted(self._file["mask"].keys()) if "mask" in self._file else []
            raise DatasetError(f"{self.path}: no filter key {key!r}; available: {available or 'none'}")
        return [n.decode() if isinstance(n, bytes) else str(n) for n in self._file["mask"][key][()]]

    def __len__(self) -> int:
        return len(self.demo_names)

    def __iter__(self) -> Iterator[Episode]:
        for name in self.demo_names:
            yield self.episode(name)

    def episode(self, name: str) -> Episode:
        if name not in self._file["data"]:
            raise DatasetError(f"{self.path}: no demo {name!r}; it has {len(self)} demos")
        group = self._file["data"][name]
        try:
            actions = np.asarray(group["actions"][()], dtype=np.float32)
            n = len(actions)
            dones = group["dones"][()].astype(bool) if "dones" in group else np.eye(1, n, n - 1, dtype=bool)[0]
            terminated = group["terminated"][()].astype(bool) if "terminated" in group else dones.copy()
            truncated = group["truncated"][()].astype(bool) if "truncated" in group else np.zeros(n, dtype=bool)
            extras = {
                k: group[k][()] for k in group.keys()
                if k not in _CORE_DATASETS and isinstance(group[k], h5py.Dataset)
            }
            return Episode(
                obs=_observations(group["obs"]) if "obs" in group else {},
                next_obs=_observations(group["next_obs"]) if "next_obs" in group else {},
                actions=actions,
                rewards=np.asarray(group["rewards"][()], dtype=np.float32) if "rewards" in group else np.zeros(n, np.float32),
                terminated=terminated,
                truncated=truncated,
                states=group["states"][()] if "states" in group else None,
                extras=extras,
                attrs={"name": name, **{k: _attr(v) for k, v in group.attrs.items()}},
                reward_terms=({k: np.asarray(v[()], np.float32) for k, v in group["reward_terms"].items()}
                              if "reward_terms" in group else {}),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise DatasetError(f"{self.path}: data/{name} could not be read ({exc}); re-record it") from None

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> DemoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attr(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
