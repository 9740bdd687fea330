"""`hilrl train`: the run folder, then the strategy the algorithm's registration names.

Every strategy is built from the same core (:mod:`hilrl.runtime.run` for the folder, checkpoints,
resume and metrics; :mod:`hilrl.runtime.steps` for acting and storing; :mod:`hilrl.runtime.seeds`
for seeds): ``online`` (:mod:`hilrl.runtime.strategies.online`, or a learner with actor processes
with ``runtime: distributed``, :mod:`hilrl.runtime.distributed.learner`), ``offline``
(:mod:`hilrl.runtime.strategies.offline`), ``dagger`` (:mod:`hilrl.runtime.strategies.dagger_loop`) and ``sb3``
(:mod:`hilrl.runtime.strategies.sb3_loop`). The run folder's layout is in :mod:`hilrl.runtime.run`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from hilrl.config import ExperimentConfig
from hilrl.policies.registry import algorithm_spec
from hilrl.runtime.evaluate import EvalResult
from hilrl.runtime.run import RunFolder


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
        raise ValueError("train(reward_source=...) drives the local online loop; use the config's reward: section "
                         "for the others")
    run = RunFolder(config, out)
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
    if distributed:
        from hilrl.runtime.distributed.learner import train_distributed

        return train_distributed(config, run, episodes, show_progress)
    from hilrl.runtime.strategies.online import train_online

    return train_online(config, run, episodes, show_progress, reward_source=reward_source, device=device)
