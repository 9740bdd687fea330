"""From ``algo.name`` in a config to the algorithm class, and checkpoints that rebuild it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from hilrl.errors import HilrlError
from hilrl.policies.bc import BC
from hilrl.policies.dagger import DAgger
from hilrl.policies.sac import SAC
from hilrl.policies.sb3 import SB3_ALGORITHMS, SB3Agent

ALGORITHMS: dict[str, type] = {"bc": BC, "sac": SAC, "dagger": DAgger, "hg_dagger": DAgger,
                               **{name: SB3Agent for name in SB3_ALGORITHMS}}


def make_algorithm(config: Any, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, seed: int = 0) -> Any:
    """Build the algorithm named by ``config.name`` for these spaces."""
    try:
        cls = ALGORITHMS[config.name]
    except KeyError:
        raise HilrlError(f"unknown algorithm {config.name!r}; allowed: {', '.join(sorted(ALGORITHMS))}") from None
    return cls(observation_space, action_space, config, seed=seed)


def save_checkpoint(path: str | os.PathLike, algo: Any, experiment: dict[str, Any], **extra: Any) -> Path:
    """Write ``algo``'s state with the experiment config that rebuilds it; temp file + rename, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"algo": algo.algo_name, "experiment": experiment, "state": algo.state_dict(), **extra}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HilrlError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise HilrlError(f"{path}: not a readable hilrl checkpoint ({exc.__class__.__name__}: {exc})") from None
