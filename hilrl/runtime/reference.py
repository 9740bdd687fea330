"""The reference critic Q_ref that RLIF's simulated person reads, built on first use.

RLIF (Luo et al., "RLIF: Interactive Imitation Learning as Reinforcement Learning", ICLR 2024,
arXiv:2311.12996; github.com/pd-perry/RLIF) simulates the person's decision to step in with a
value gate: intervene when ``Q_ref(s, a_policy) < beta * Q_ref(s, a_expert)``, where Q_ref is the
critic ensemble of an RLPD run (Ball et al., "Efficient Online Reinforcement Learning with Offline
Data", ICML 2023; github.com/ikostrikov/rlpd) on the task's own reward. Here Q_ref is our SAC
trained from expert demos on the task's dense reward; its run folder is the artifact that
``intervention.q_ref`` names (:func:`hilrl.runtime.interventions.reference_q`).

``benchmarks/train_reference_critic.py`` is the command-line form of :func:`ensure_reference_critic`.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from hilrl.config import validate_config
from hilrl.errors import HilrlError
from hilrl.runtime.progress import console

OBS_KEYS = ["ee_pos", "gripper", "object", "tcp_to_object", "object_to_goal"]  # the last two: env.relative_positions
SIM_CONFIGS = Path(__file__).resolve().parents[2] / "sim_configs"
RLPD_CONFIGS = {"PickCube": "pick_cube_rlpd.yaml"}  # tasks with a ready RLPD experiment: their reference is it


def reference_experiment(task: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """The raw experiment config of the reference run for ``task`` (e.g. ``"Push"``): ``steps`` env steps of SAC.

    A task with a ready RLPD experiment in ``sim_configs/`` runs that one; the others a
    generic recipe: RLPD's 10 critics at UTD 2 on the dense reward as a cost, each episode
    ending on success, so that Q_ref reads "how soon will this succeed". The same arguments
    always give the same dict, so a half-built reference resumes (:func:`hilrl.runtime.train.check_same_run`).
    """
    if task in RLPD_CONFIGS:
        path = SIM_CONFIGS / RLPD_CONFIGS[task]
        if not path.is_file():
            raise HilrlError(f"the {task} reference critic runs {path}, which is missing; reinstall hilrl from its "
                             f"repository (pip install -e .) so that sim_configs/ is next to the package")
        config = yaml.safe_load(path.read_text())
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


def _task_name(task_id: str) -> str:
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


def ensure_reference_critic(path: str | os.PathLike, task_id: str, steps: int, seed: int = 0,
                            show_progress: bool = True) -> Path:
    """``path`` holding a finished reference run for ``task_id``: as it is, else trained (or finished) there.

    A checkpoint file, or a folder with a finished run, is returned untouched, whatever its
    steps. Otherwise :func:`reference_experiment` is trained into ``path``; a folder killed
    mid-way (checkpoints, no ``metrics.json``) resumes from its last checkpoint, and one
    holding another experiment's run is refused by :func:`hilrl.runtime.train.train`.
    """
    path = Path(path)
    if path.is_file() or is_finished_run(path):
        return path
    task = _task_name(task_id)
    config = validate_config(reference_experiment(task, steps, seed), source=f"reference critic for {task}")
    command = ["python", "benchmarks/train_reference_critic.py", "--task", task, "--steps", str(steps),
               *(["--seed", str(seed)] if seed else []), "--out", str(path)]
    state = "finishing the half-built one" if any((path / "checkpoints").glob("step_*.pt")) else "building it"
    console.print(f"RLIF's value gate needs a reference critic and {path} holds none yet: {state} now, on first "
                  f"use (SAC, {steps} env steps on {task}'s dense reward); the same as: {shlex.join(command)}",
                  markup=False, highlight=False, soft_wrap=True)
    from hilrl.runtime.train import train  # lazily: it imports much, and runs the code that calls this

    train(config, path, show_progress=show_progress)
    return path
