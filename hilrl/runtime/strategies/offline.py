"""Offline learning (behaviour cloning): the loop core's offline strategy.

The demos fill the replay's demo buffer; ``algo.update(replay)`` runs ``train.steps`` times; the
run folder gets scalars and checkpoints, then the final evaluation made here, and ``metrics.json``, as
every strategy's.
"""

from __future__ import annotations

import time

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import Replay
from hilrl.envs.make import make_env
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.evaluate import EvalResult, final_evaluation
from hilrl.runtime.progress import make_progress
from hilrl.runtime.run import RunFolder
from hilrl.runtime.seeds import Seeds


def train_offline(config: ExperimentConfig, run: RunFolder, demo_episodes: list,
                  show_progress: bool = True) -> EvalResult:
    training = config.train
    env = make_env(config.env)
    algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=Seeds(training.seed).network)
    replay = Replay.create(env.observation_space, env.action_space, max(1, sum(len(e) for e in demo_episodes)))
    env.close()
    replay.add_demos(demo_episodes)

    started = time.perf_counter()
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"train {config.algo.name}", total=training.steps, stats=f"{len(replay.demo)} samples")
        for step in range(1, training.steps + 1):
            metrics = algo.update(replay)
            if step % training.log_every == 0 or step == training.steps:
                run.scalars(step, metrics, "train/")
                rate = step / (time.perf_counter() - started)
                bar.update(task, completed=step, stats=f"loss {metrics['loss']:.4f}  {rate:.0f} updates/s")
            if step % training.checkpoint_every == 0 or step == training.steps:
                run.checkpoint(step, algo, {"updates": step})
    train_seconds = time.perf_counter() - started
    result = final_evaluation(config, algo, run.ckpt_dir / f"step_{training.steps}.pt", run.final_video, show_progress)
    return run.finish(result, None, training.steps, train_steps=training.steps, demo_episodes=len(demo_episodes),
                      demo_samples=len(replay.demo), train_seconds=round(train_seconds, 2))
