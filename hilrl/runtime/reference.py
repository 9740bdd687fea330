"""The reference critic Q_ref that RLIF's simulated person reads: its recipe, and loading it.

RLIF (Luo et al., "RLIF: Interactive Imitation Learning as Reinforcement Learning", ICLR 2024,
arXiv:2311.12996; github.com/pd-perry/RLIF) simulates the person's decision to step in with a
value gate: intervene when ``Q_ref(s, a_policy) < beta * Q_ref(s, a_expert)``, where Q_ref is the
critic ensemble of an RLPD run (Ball et al., "Efficient Online Reinforcement Learning with Offline
Data", ICML 2023; github.com/ikostrikov/rlpd) on the task's own reward. Here Q_ref is our SAC
trained from expert demos on the task's dense reward; its run folder is the artifact that
``intervention.q_ref`` names.

This module holds the recipe (:func:`reference_experiment`, data only: it never reads the repository's
``sim_configs/``) and the loader (:func:`reference_q`) the runtime hands to the ``value`` interventionist.
Training a missing one is :func:`hilrl.runtime.train.ensure_reference_critic`, run by
:func:`hilrl.runtime.train.train` before it dispatches (the one place that trains);
``benchmarks/train_reference_critic.py`` is its command-line form.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hilrl.errors import HilrlError

OBS_KEYS = ["ee_pos", "gripper", "object", "tcp_to_object", "object_to_goal"]  # the last two: env.relative_positions

# RLPD on PickCube, as sim_configs/pick_cube_rlpd.yaml runs it (its comments say why each setting);
# tests/test_plugins.py checks the two validate to the same experiment, so they cannot drift apart.
PICK_CUBE_RLPD: dict[str, Any] = {
    "env": {"id": "hilrl/PickCube-v0", "reward_type": "dense", "relative_positions": True,
            "terminate_on_success": False},
    "demos": {"episodes": 50},
    "algo": {"name": "sac", "num_critics": 2, "utd": 8, "gamma": 0.97, "init_temperature": 0.01,
             "learn_temperature": False, "normalisation": {"enabled": True}, "variants": {"bc_coef": 0.4},
             "obs_keys": list(OBS_KEYS)},
    "train": {"steps": 20000, "learning_starts": 500, "eval_every": 5000, "eval_episodes": 50, "keep_best": True,
              "checkpoint_every": 5000},
}
RLPD_RECIPES = {"PickCube": PICK_CUBE_RLPD}  # tasks with a ready RLPD experiment: their reference is it


def reference_experiment(task: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """The raw experiment config of the reference run for ``task`` (e.g. ``"Push"``): ``steps`` env steps of SAC.

    A task with a ready RLPD experiment (:data:`RLPD_RECIPES`) runs that one; the others a
    generic recipe: RLPD's 10 critics at UTD 2 on the dense reward as a cost, each episode
    ending on success, so that Q_ref reads "how soon will this succeed". The same arguments
    always give the same dict, so a half-built reference resumes (:func:`hilrl.runtime.run.check_same_run`).
    """
    if task in RLPD_RECIPES:
        config = copy.deepcopy(RLPD_RECIPES[task])
        config["train"].update(steps=steps, seed=seed, checkpoint_every=steps, video=False)
        return config
    return {
        "env": {"id": f"hilrl/{task}-v0", "reward_type": "dense_cost", "terminate_on_success": True,
                "relative_positions": True},
        "demos": {"episodes": 10},
        "algo": {"name": "sac", "num_critics": 10, "utd": 2, "gamma": 0.97, "init_temperature": 0.05,
                 "obs_keys": list(OBS_KEYS)},
        "train": {"steps": steps, "seed": seed, "learning_starts": 500, "eval_episodes": 20,
                  "checkpoint_every": steps, "video": False},
    }


def task_name(task_id: str) -> str:
    """``"hilrl/Push-v0"`` or ``"Push"`` -> ``"Push"``."""
    match = re.fullmatch(r"(?:hilrl/)?(\w+?)(?:-v\d+)?", task_id)
    if not match:
        raise HilrlError(f"reference critic: {task_id!r} is no hilrl task; pass a task name such as Push "
                         f"or its env id hilrl/Push-v0")
    return match.group(1)


def is_finished_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a run folder whose training ended: ``metrics.json`` next to its checkpoints."""
    path = Path(path)
    return (path / "metrics.json").is_file() and any((path / "checkpoints").glob("step_*.pt"))


def reference_q(checkpoint: str | os.PathLike, observation_space: gym.spaces.Dict | None = None) -> Any:
    """``Q_ref(obs, action)``: the mean of a trained SAC critic ensemble (RLIF's reference value).

    ``checkpoint`` is a checkpoint file or a finished run folder (``hilrl train`` builds a missing one
    before the run starts). With ``observation_space`` (the training env's), a critic that reads keys
    the env does not observe is refused, naming them.
    """
    import torch

    from hilrl.runtime.run import load_policy

    path = Path(checkpoint)
    if not (path.is_file() or is_finished_run(path)):
        state = "holds an unfinished run" if path.exists() else "does not exist"
        raise HilrlError(f"intervention.q_ref {str(checkpoint)!r} {state}: the reference critic is trained before "
                         f"the run starts by `hilrl train` (or `hilrl learner`), or by hand: python "
                         f"benchmarks/train_reference_critic.py --task TASK --out {checkpoint}")
    config, sac, _ = load_policy(path)
    if config.algo.name != "sac":
        raise HilrlError(f"{checkpoint}: q_ref must be a SAC run (got algo {config.algo.name!r})")
    missing = sorted(set(sac.keys) - set(observation_space.spaces)) if observation_space is not None else []
    if missing:
        hint = " (set env.relative_positions: true)" if {"tcp_to_object", "object_to_goal"} & set(missing) else ""
        raise HilrlError(f"intervention.q_ref {str(checkpoint)!r} reads observation keys {missing} this env does not "
                         f"have{hint}; the reference critic must see what the training env observes")

    @torch.no_grad()
    def q(obs: dict[str, np.ndarray], action: np.ndarray) -> float:
        tensors = {k: torch.as_tensor(np.asarray(obs[k])[None], device=sac.device) for k in sac.keys}
        features = sac.critic["encoder"](tensors)
        actions = torch.as_tensor(action, dtype=torch.float32, device=sac.device)[None]
        return float(sac.critic["q"](features, actions).mean())

    return q
