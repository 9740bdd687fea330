"""`hilrl train` for SB3 algorithms (``algo: {name: sb3.sac}`` ...): the loop core's SB3 strategy.

SB3's own ``learn()`` drives the env, which is built as for every loop of ours
(:func:`hilrl.runtime.steps.make_training_env`: the task, the intervention wrapper with the
simulated or real person, with the same seeds), then the agent's mapping to the policy's keys,
SB3's ``Monitor`` and ``DummyVecEnv``. A callback keeps the run folder
(:class:`~hilrl.runtime.run.RunFolder`): TensorBoard scalars in ``tb/`` (SB3's ``train/*`` plus
our ``rollout/*``) and ``checkpoints/step_N.pt`` in the one checkpoint layout; after ``learn()`` the final
evaluation goes to the run folder as every strategy's (``eval/*``, video, ``metrics.json``), so
`hilrl eval RUN_DIR` works unchanged.

Interventions follow ``intervention.learn_from: hil_serl``: the executed action
is stored (:class:`~hilrl.policies.sb3.ExecutedActionMixin`) and intervened
steps are copied to the demo buffer. Reward sources (RLIF's relabelling among them) are not
offered for SB3 (its buffer keeps SB3's own columns); the config refuses them. SB3 acts
uniformly at random for its first ``train.learning_starts`` steps, which is what
``train.random_steps`` does in our loop, so that key must stay 0.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from hilrl.config import ExperimentConfig
from hilrl.envs.make import make_env
from hilrl.errors import HilrlError
from hilrl.policies.registry import make_algorithm
from hilrl.policies.sb3 import SB3Agent
from hilrl.runtime.evaluate import EvalResult, evaluate_policy, final_evaluation
from hilrl.runtime.progress import make_progress
from hilrl.runtime.run import RunFolder, step_checkpoints
from hilrl.runtime.seeds import VALIDATION_SEED, Seeds
from hilrl.runtime.steps import fresh_counters
from hilrl.runtime.steps import make_training_env as make_task_env


def check_sb3_experiment(config: ExperimentConfig, out: str | os.PathLike) -> None:
    """Refuse what the SB3 path cannot honour, before any demo is recorded (the config refuses the rest)."""
    if step_checkpoints(out):
        raise HilrlError(f"{out} already holds checkpoints; SB3 runs do not resume yet: pass a new --out folder")


class _RunFolderCallback(BaseCallback):
    """Counts interventions and successes, logs scalars, writes checkpoints and runs periodic evaluations."""

    def __init__(self, agent: SB3Agent, config: ExperimentConfig, run: RunFolder, bar: Any, task: Any):
        super().__init__()
        self.agent, self.config, self.run, self.bar, self.task = agent, config, run, bar, task
        self.counters = fresh_counters()
        self.recent_success: deque[bool] = deque(maxlen=20)
        self.recent_intervened: deque[bool] = deque(maxlen=500)
        self.last_checkpoint = -1

    def checkpoint(self) -> None:
        step = self.counters["env_steps"]
        self.counters["updates"] = int(self.model._n_updates)
        self.run.checkpoint(step, self.agent, self.counters)
        self.last_checkpoint = step

    def _on_step(self) -> bool:
        training = self.config.train
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            intervened = bool(info.get("intervened", False))
            self.counters["interventions"] += int(bool(info.get("intervention_start", False)))
            self.counters["intervened_steps"] += int(intervened)
            self.recent_intervened.append(intervened)
            if done:
                success = bool(info.get("is_success", False))
                self.counters["episodes"] += 1
                self.counters["successes"] += int(success)
                self.recent_success.append(success)
        self.counters["env_steps"] = step = int(self.num_timesteps)

        if step % training.log_every == 0 or step == training.steps:
            success = float(np.mean(self.recent_success)) if self.recent_success else 0.0
            intervention_rate = float(np.mean(self.recent_intervened)) if self.recent_intervened else 0.0
            self.logger.record("rollout/success_rate", success)
            self.logger.record("rollout/intervention_rate", intervention_rate)
            self.logger.record("rollout/interventions", self.counters["interventions"])
            self.logger.dump(step)
            self.bar.update(self.task, completed=step,
                            stats=f"success {success:.0%}  intervened {intervention_rate:.0%}  "
                                  f"{self.model._n_updates} updates")
        if training.eval_every and step % training.eval_every == 0 and step < training.steps:
            result = evaluate_policy(self.config.env, lambda o: self.agent.act(o, deterministic=True),
                                     training.eval_episodes, seed=VALIDATION_SEED, show_progress=False)
            self.logger.record("eval/success_rate", result.success_rate)
            self.logger.record("eval/mean_return", result.mean_return)
            self.logger.dump(step)
        # SB3 updates after this callback; the last checkpoint is written after learn() returns
        if step % training.checkpoint_every == 0 and step < training.steps:
            self.checkpoint()
        return True


def make_training_env(config: ExperimentConfig, agent: SB3Agent, device: Any = None) -> DummyVecEnv:
    """The loops' training env (task -> intervention wrapper, which needs the full observation) -> policy keys
    -> Monitor -> DummyVecEnv, seeded as SB3 seeds (``train.seed``)."""
    env = Monitor(agent.wrap_env(make_task_env(config, Seeds(config.train.seed), device=device)))
    vec_env = DummyVecEnv([lambda: env])
    vec_env.seed(config.train.seed)
    return vec_env


def train_sb3(config: ExperimentConfig, run: RunFolder, demo_episodes: list, show_progress: bool = True,
              device: Any = None) -> EvalResult:
    """Run ``train.steps`` env steps of the configured SB3 algorithm and write the run folder
    (:func:`hilrl.runtime.train.train` has refused a folder this cannot resume: :func:`check_sb3_experiment`)."""
    training, intervention = config.train, config.intervention

    probe = make_env(config.env)
    agent = make_algorithm(config.algo, probe.observation_space, probe.action_space, seed=Seeds(training.seed).network)
    probe.close()
    vec_env = make_training_env(config, agent, device=device)
    agent.start_training(vec_env, training.buffer_capacity, training.learning_starts, demo_episodes,
                         copy_interventions=intervention.learning_rule == "hil_serl")
    agent.model.set_logger(configure(str(run.out / "tb"), ["tensorboard"]))

    started = time.perf_counter()
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"{config.algo.name} {config.env.id}", total=training.steps, stats="")
        callback = _RunFolderCallback(agent, config, run, bar, task)
        # log_interval=None: SB3 dumps nothing itself; the callback dumps every train.log_every steps
        agent.model.learn(training.steps, callback=callback, log_interval=None)
        callback.checkpoint()  # after SB3's last update (and any overshoot of train_freq in episodes)
    vec_env.close()
    train_seconds = time.perf_counter() - started

    result = final_evaluation(config, agent, run.ckpt_dir / f"step_{callback.last_checkpoint}.pt", run.final_video,
                              show_progress)
    agent.model.logger.close()  # SB3's scalars are all written; the final evaluation's go through the run folder
    return run.finish(result, callback.counters, callback.last_checkpoint, demo_episodes=len(demo_episodes),
                      online_transitions=int(agent.replay_buffer.size()),
                      demo_transitions=int(agent.replay_buffer.demo.size()), train_seconds=round(train_seconds, 2),
                      intervention_source=intervention.source, learn_from=intervention.learning_rule)
