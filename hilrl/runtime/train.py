"""`hilrl train`: the run folder, then the strategy the algorithm's registration names.

Every strategy is built from the same core (:mod:`hilrl.runtime.run` for the folder, checkpoints,
resume and metrics; :mod:`hilrl.runtime.steps` for acting and storing; :mod:`hilrl.runtime.seeds`
for seeds): ``online`` (:mod:`hilrl.runtime.strategies.online`, or a learner with actor processes
with ``runtime: distributed``, :mod:`hilrl.runtime.distributed.learner`, or as Ray actors with
``runtime.backend: ray``, :mod:`hilrl.runtime.distributed.ray_backend`), ``offline``
(:mod:`hilrl.runtime.strategies.offline`), ``dagger`` (:mod:`hilrl.runtime.strategies.dagger_loop`) and ``sb3``
(:mod:`hilrl.runtime.strategies.sb3_loop`). The run folder's layout is in :mod:`hilrl.runtime.run`.

Before it dispatches, :func:`prepare` makes what the run needs and does not have: the reference critic
of RLIF's value gate (``intervention.q_ref``) is trained by :func:`train` itself
(:func:`ensure_reference_critic`), so this module is the only place that trains, and the strategies and
the actor processes only load the critic (:func:`hilrl.runtime.reference.reference_q`).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import torch

from hilrl.config import ExperimentConfig, validate_config
from hilrl.errors import HilrlError
from hilrl.feedback.interventions import INTERVENTIONISTS
from hilrl.policies.registry import algorithm_spec
from hilrl.runtime import reference
from hilrl.runtime.evaluate import EvalResult
from hilrl.runtime.progress import console
from hilrl.runtime.run import RunFolder, step_checkpoints


def ensure_reference_critic(path: str | os.PathLike, task_id: str, steps: int, seed: int = 0,
                            show_progress: bool = True) -> Path:
    """``path`` holding a finished reference run for ``task_id``: as it is, else trained (or finished) there.

    A checkpoint file, or a folder with a finished run, is returned untouched, whatever its
    steps. Otherwise :func:`hilrl.runtime.reference.reference_experiment` is trained into ``path`` by
    :func:`train`; a folder killed mid-way (checkpoints, no ``metrics.json``) resumes from its last
    checkpoint, and one holding another experiment's run is refused.
    """
    path = Path(path)
    if path.is_file() or reference.is_finished_run(path):
        return path
    task = reference.task_name(task_id)
    config = validate_config(reference.reference_experiment(task, steps, seed), source=f"reference critic for {task}")
    command = ["python", "benchmarks/train_reference_critic.py", "--task", task, "--steps", str(steps),
               *(["--seed", str(seed)] if seed else []), "--out", str(path)]
    state = "finishing the half-built one" if step_checkpoints(path) else "building it"
    console.print(f"RLIF's value gate needs a reference critic and {path} holds none yet: {state} now, on first "
                  f"use (SAC, {steps} env steps on {task}'s dense reward); the same as: {shlex.join(command)}",
                  markup=False, highlight=False, soft_wrap=True)
    train(config, path, show_progress=show_progress)
    return path


def prepare(config: ExperimentConfig, show_progress: bool = True) -> None:
    """Make what the run reads and may lack, before any strategy (or actor process) starts: the reference critic
    of an interventionist that reads one (``intervention.q_ref``, trained there when missing)."""
    intervention = config.intervention
    if intervention.source != "none" and INTERVENTIONISTS.entry(intervention.source)["reference_critic"]:
        ensure_reference_critic(intervention.q_ref, config.env.id, intervention.q_ref_steps, seed=0,
                                show_progress=show_progress)


def train(config: ExperimentConfig, out: str | os.PathLike, show_progress: bool = True, *,
          reward_source: Any = None, device: Any = None) -> EvalResult:
    """Train the configured algorithm, checkpoint it, evaluate it and write the run folder ``out``.

    A folder that holds a checkpoint of the same config is resumed (online strategies); one of
    another config is refused. ``reward_source`` replaces the config's ``reward:`` with any
    :class:`~hilrl.feedback.rewards.RewardSource` (online, local); ``device`` is an open teleop device
    for ``intervention.source: device`` (else the configured one is opened).
    """
    spec = algorithm_spec(config.algo.name)
    distributed = config.runtime.mode == "distributed"
    if spec.loop == "sb3":
        from hilrl.runtime.strategies.sb3_loop import check_sb3_experiment

        check_sb3_experiment(config, out)  # before any demo is recorded
    if reward_source is not None and (spec.loop != "online" or distributed):
        raise HilrlError("train(reward_source=...) drives the local online loop; use the config's reward: section "
                         "for the others")
    run = RunFolder(config, out)
    prepare(config, show_progress)
    torch.set_num_threads(config.train.threads)
    episodes = run.demo_episodes(show_progress)
    if spec.loop == "offline":
        from hilrl.runtime.strategies.offline import train_offline

        return train_offline(config, run, episodes, show_progress)
    if spec.loop == "dagger":
        from hilrl.runtime.strategies.dagger_loop import train_dagger

        return train_dagger(config, run, episodes, show_progress)
    if spec.loop == "sb3":
        from hilrl.runtime.strategies.sb3_loop import train_sb3

        return train_sb3(config, run, episodes, show_progress, device=device)
    if distributed and config.runtime.backend == "ray":
        from hilrl.runtime.distributed.ray_backend import train_ray

        return train_ray(config, run, show_progress)
    if distributed:
        from hilrl.runtime.distributed.learner import train_distributed

        return train_distributed(config, run, episodes, show_progress)
    from hilrl.runtime.strategies.online import train_online

    return train_online(config, run, episodes, show_progress, reward_source=reward_source, device=device)


def train_learner(config: ExperimentConfig, out: str | os.PathLike, bind: str | None = None,
                  show_progress: bool = True) -> EvalResult | None:
    """`hilrl learner`: :func:`prepare` (the actors that connect find the reference critic built), then the
    learner alone (:func:`hilrl.runtime.distributed.learner.run_learner`)."""
    from hilrl.runtime.distributed.learner import run_learner

    prepare(config, show_progress)
    return run_learner(config, out, bind=bind, show_progress=show_progress)
