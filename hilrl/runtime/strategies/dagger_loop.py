"""DAgger / HG-DAgger: the loop core's dagger strategy. Act, collect expert labels, retrain every round.

DAgger (Ross et al. 2011): the learner acts and the scripted expert labels every state it visits.
HG-DAgger (Kelly et al. 2019): a gated expert takes over when the learner strays
(``intervention.source``), and only the intervention steps (state, expert action) are labelled.
After every ``algo.round_steps`` env steps the labels are aggregated and ``algo.update(replay)``
retrains on everything so far (the demos first). With ``train.eval_every`` the policy is evaluated on the
validation seeds every so many env steps (``eval/`` in TensorBoard), as the online loop does.
"""

from __future__ import annotations

import time

import numpy as np

from hilrl.config import ExperimentConfig
from hilrl.data.buffers import Replay
from hilrl.feedback.experts import make_expert
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.evaluate import EvalResult, evaluate_policy, final_evaluation
from hilrl.runtime.progress import make_progress
from hilrl.runtime.run import RunFolder
from hilrl.runtime.seeds import VALIDATION_SEED, Seeds
from hilrl.runtime.steps import StepSource, fresh_counters, make_training_env


def train_dagger(config: ExperimentConfig, run: RunFolder, demo_episodes: list,
                 show_progress: bool = True) -> EvalResult:
    """``train.steps`` env steps of DAgger (label every state) or HG-DAgger (label interventions)."""
    training, algo_cfg = config.train, config.algo
    hg = algo_cfg.label == "interventions"
    seeds = Seeds(training.seed)
    env = make_training_env(config, seeds)
    labeller = None if hg else make_expert(env, noise=config.intervention.expert_noise, seed=seeds.expert)
    algo = make_algorithm(algo_cfg, env.observation_space, env.action_space, seed=seeds.network)
    replay = Replay.create(env.observation_space, env.action_space, max(1, sum(len(e) for e in demo_episodes)))
    replay.add_demos(demo_episodes)
    metrics = algo.update(replay)  # behaviour cloning on the demos

    counters = fresh_counters("labels")
    steps = StepSource(env, algo.act, seeds, counters)
    round_obs: list[dict[str, np.ndarray]] = []
    round_labels: list[np.ndarray] = []
    started = time.perf_counter()
    try:
        with make_progress(not show_progress) as bar:
            task = bar.add_task(f"{algo_cfg.name} {config.env.id}", total=training.steps, stats="")
            while counters["env_steps"] < training.steps:
                transition = steps.step()
                if labeller is not None:
                    if transition["episode_start"]:
                        labeller.reset()
                    round_obs.append(transition["obs"])
                    round_labels.append(np.asarray(labeller(transition["obs"]), np.float32))
                elif transition["intervened"]:
                    round_obs.append(transition["obs"])
                    round_labels.append(transition["action"])  # what the expert executed
                step = counters["env_steps"]
                if step % algo_cfg.round_steps == 0 or step == training.steps:
                    if round_obs:
                        algo.aggregate({k: np.stack([o[k] for o in round_obs]) for k in round_obs[0]},
                                       np.stack(round_labels))
                        counters["labels"] += len(round_obs)
                        round_obs, round_labels = [], []
                    metrics = algo.update(replay)
                    counters["updates"] += 1
                    run.scalars(step, {"loss": metrics.get("loss", 0.0), "labels": counters["labels"]}, "train/")
                    run.scalars(step, steps.rollout_scalars(), "rollout/")
                    bar.update(task, completed=step, stats=f"{steps.stats()}  labels {algo.num_samples}")
                if training.eval_every and step % training.eval_every == 0 and step < training.steps:
                    result = evaluate_policy(config.env, algo.act, training.eval_episodes, seed=VALIDATION_SEED,
                                             show_progress=False)
                    run.scalars(step, {"success_rate": result.success_rate, "mean_return": result.mean_return},
                                "eval/")
    finally:
        env.close()
    checkpoint = run.checkpoint(training.steps, algo, counters)
    train_seconds = time.perf_counter() - started
    result = final_evaluation(config, algo, checkpoint, run.final_video, show_progress)
    return run.finish(result, counters, training.steps, train_seconds=round(train_seconds, 2))
