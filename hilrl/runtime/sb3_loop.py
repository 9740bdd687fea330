"""`hilrl train` for SB3 algorithms (``algo: {name: sb3.sac}`` ...): SB3's own ``learn()`` in hilrl's run folder.

The env is built as for our own loop (task, then the intervention wrapper, then
the agent's mapping to the policy's keys, then SB3's ``Monitor`` and ``DummyVecEnv``), and
SB3 drives it. A callback keeps the run folder of :mod:`hilrl.runtime.train`:
TensorBoard scalars in ``tb/`` (SB3's ``train/*`` plus our ``rollout/*``),
``checkpoints/step_N.pt`` through :func:`~hilrl.policies.registry.save_checkpoint`,
then the final evaluation, video and ``metrics.json`` — so `hilrl eval RUN_DIR`
works unchanged.

Interventions follow ``intervention.learn_from: hil_serl``: the executed action
is stored (:class:`~hilrl.policies.sb3.ExecutedActionMixin`) and intervened
steps are copied to the demo buffer. RLIF relabelling is not offered for SB3.
SB3 acts uniformly at random for its first ``train.learning_starts`` steps,
which is what ``train.random_steps`` does in our loop, so that key must stay 0.
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
from hilrl.data.episode import Episode
from hilrl.envs.make import make_env
from hilrl.errors import HilrlError
from hilrl.feedback.experts import make_expert
from hilrl.feedback.intervention import InterventionWrapper
from hilrl.policies.registry import make_algorithm, save_checkpoint
from hilrl.policies.sb3 import SB3Agent
from hilrl.runtime.evaluate import VALIDATION_SEED, EvalResult, evaluate_policy, final_evaluation, write_metrics
from hilrl.runtime.interventions import make_interventionist
from hilrl.runtime.progress import make_progress


def check_sb3_experiment(config: ExperimentConfig, out: str | os.PathLike) -> None:
    """Refuse settings the SB3 path cannot honour, before any demo is recorded."""
    if list((Path(out) / "checkpoints").glob("step_*.pt")):
        raise HilrlError(f"{out} already holds checkpoints; SB3 runs do not resume yet: pass a new --out folder")
    if config.intervention.source != "none" and config.intervention.learn_from == "rlif":
        raise HilrlError(f"intervention.learn_from 'rlif' is not supported with algo {config.algo.name!r} (SB3 "
                         f"cannot relabel rewards); use learn_from: hil_serl, or algo: sac for RLIF")
    if config.train.random_steps:
        raise HilrlError(f"train.random_steps is not used by {config.algo.name!r}: SB3 acts uniformly at random "
                         f"for the first train.learning_starts steps; set random_steps: 0 and tune learning_starts")


class _RunFolderCallback(BaseCallback):
    """Counts interventions and successes, logs scalars, writes checkpoints and runs periodic evaluations."""

    def __init__(self, agent: SB3Agent, config: ExperimentConfig, out: Path, bar: Any, task: Any):
        super().__init__()
        self.agent, self.config, self.out, self.bar, self.task = agent, config, out, bar, task
        self.experiment = config.model_dump(mode="json")
        self.counters = dict(env_steps=0, episodes=0, successes=0, interventions=0, intervened_steps=0)
        self.recent_success: deque[bool] = deque(maxlen=20)
        self.recent_intervened: deque[bool] = deque(maxlen=500)
        self.last_checkpoint = -1

    def checkpoint(self) -> None:
        step = self.counters["env_steps"]
        save_checkpoint(self.out / "checkpoints" / f"step_{step}.pt", self.agent, self.experiment,
                        counters=dict(self.counters))
        self.last_checkpoint = step

    def _on_step(self) -> bool:
        tc = self.config.train
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

        if step % tc.log_every == 0 or step == tc.steps:
            success = float(np.mean(self.recent_success)) if self.recent_success else 0.0
            intervention_rate = float(np.mean(self.recent_intervened)) if self.recent_intervened else 0.0
            self.logger.record("rollout/success_rate", success)
            self.logger.record("rollout/intervention_rate", intervention_rate)
            self.logger.record("rollout/interventions", self.counters["interventions"])
            self.logger.dump(step)
            self.bar.update(self.task, completed=step,
                            stats=f"success {success:.0%}  intervened {intervention_rate:.0%}  "
                                  f"{self.model._n_updates} updates")
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
            result = evaluate_policy(self.config.env, lambda o: self.agent.act(o, deterministic=True),
                                     tc.eval_episodes, seed=VALIDATION_SEED, show_progress=False)
            self.logger.record("eval/success_rate", result.success_rate)
            self.logger.record("eval/mean_return", result.mean_return)
            self.logger.dump(step)
        # SB3 updates after this callback; the last checkpoint is written after learn() returns
        if step % tc.checkpoint_every == 0 and step < tc.steps:
            self.checkpoint()
        return True


def make_training_env(config: ExperimentConfig, agent: SB3Agent) -> DummyVecEnv:
    """Task -> intervention wrapper (it needs the full observation) -> policy keys -> Monitor -> DummyVecEnv."""
    tc, ic = config.train, config.intervention
    env = make_env(config.env)
    if ic.source != "none":
        source = make_interventionist(ic, make_expert(env, noise=ic.expert_noise, seed=tc.seed + 1), seed=tc.seed + 2)
        env = InterventionWrapper(env, source)
    env = Monitor(agent.wrap_env(env))
    vec_env = DummyVecEnv([lambda: env])
    vec_env.seed(tc.seed)
    return vec_env


def train_sb3(config: ExperimentConfig, out: str | os.PathLike, demo_episodes: list[Episode],
              show_progress: bool = True) -> EvalResult:
    """Run ``train.steps`` env steps of the configured SB3 algorithm and write the run folder."""
    check_sb3_experiment(config, out)
    out = Path(out)
    tc, ic = config.train, config.intervention

    probe = make_env(config.env)
    agent = make_algorithm(config.algo, probe.observation_space, probe.action_space, seed=tc.seed)
    probe.close()
    vec_env = make_training_env(config, agent)
    agent.start_training(vec_env, tc.buffer_capacity, tc.learning_starts, demo_episodes,
                         copy_interventions=ic.source != "none" and ic.learn_from == "hil_serl")
    agent.model.set_logger(configure(str(out / "tb"), ["tensorboard"]))

    started = time.perf_counter()
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"{config.algo.name} {config.env.id}", total=tc.steps, stats="")
        callback = _RunFolderCallback(agent, config, out, bar, task)
        # log_interval=None: SB3 dumps nothing itself; the callback dumps every train.log_every steps
        agent.model.learn(tc.steps, callback=callback, log_interval=None)
        callback.checkpoint()  # after SB3's last update (and any overshoot of train_freq in episodes)
    vec_env.close()
    train_seconds = time.perf_counter() - started

    result = final_evaluation(config, lambda o: agent.act(o, deterministic=True), out,
                              out / "checkpoints" / f"step_{callback.last_checkpoint}.pt", show_progress)
    agent.model.logger.record("eval/success_rate", result.success_rate)
    agent.model.logger.record("eval/mean_return", result.mean_return)
    agent.model.logger.dump(callback.last_checkpoint)
    agent.model.logger.close()
    buffer = agent.replay_buffer
    write_metrics(out, result, callback.counters, algo=config.algo.name, env=config.env.id,
                  updates=int(agent.model._n_updates), demo_episodes=len(demo_episodes),
                  online_transitions=int(buffer.size()), demo_transitions=int(buffer.demo.size()),
                  train_seconds=round(train_seconds, 2), intervention_source=ic.source,
                  learn_from=ic.learn_from if ic.source != "none" else None)
    return result
