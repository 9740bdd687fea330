"""The DAgger / HG-DAgger loop: act, collect expert labels, retrain every round."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from hilrl.config import ExperimentConfig
from hilrl.data.episode import Episode
from hilrl.envs.make import make_env
from hilrl.errors import HilrlError
from hilrl.feedback.experts import make_expert
from hilrl.feedback.intervention import InterventionWrapper
from hilrl.policies.registry import make_algorithm, save_checkpoint
from hilrl.runtime.evaluate import EvalResult, final_evaluation, write_metrics
from hilrl.runtime.interventions import make_interventionist
from hilrl.runtime.progress import make_progress


def train_dagger(config: ExperimentConfig, out: str | os.PathLike, demo_episodes: list[Episode],
                 show_progress: bool = True) -> EvalResult:
    """``train.steps`` env steps of DAgger (label every state) or HG-DAgger (label interventions)."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    tc, ic, algo_cfg = config.train, config.intervention, config.algo
    hg = algo_cfg.label == "interventions"
    if hg and ic.source == "none":
        raise HilrlError("HG-DAgger learns from interventions: set intervention.source (e.g. distance)")
    if not demo_episodes:
        raise HilrlError("DAgger starts from behaviour cloning: set demos.episodes > 0 or demos.path")

    env = make_env(config.env)
    expert = make_expert(env, noise=ic.expert_noise, seed=tc.seed + 1)
    if hg:
        env = InterventionWrapper(env, make_interventionist(ic, expert, seed=tc.seed + 2))
    agent = make_algorithm(algo_cfg, env.observation_space, env.action_space, seed=tc.seed)
    for ep in demo_episodes:
        agent.aggregate(ep.obs, ep.actions)
    metrics = agent.refit()

    writer = SummaryWriter(str(out / "tb"))
    counters = {"env_steps": 0, "episodes": 0, "successes": 0, "interventions": 0, "intervened_steps": 0,
                "labels": 0}
    round_obs: list[dict[str, np.ndarray]] = []
    round_labels: list[np.ndarray] = []
    started = time.perf_counter()
    obs, _ = env.reset(seed=tc.seed * 1_000_003)
    if not hg:
        expert.reset()
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"{'hg_' if hg else ''}dagger {config.env.id}", total=tc.steps, stats="")
        while counters["env_steps"] < tc.steps:
            action = agent.act(obs)
            if not hg:
                round_obs.append(obs)
                round_labels.append(np.asarray(expert(obs), np.float32))
            next_obs, _, terminated, truncated, info = env.step(action)
            if hg and info["intervened"]:
                round_obs.append(obs)
                round_labels.append(info["executed_action"])
            counters["env_steps"] += 1
            counters["interventions"] += int(info.get("intervention_start", False))
            counters["intervened_steps"] += int(info.get("intervened", False))
            if terminated or truncated:
                counters["episodes"] += 1
                counters["successes"] += int(bool(info.get("is_success", False)))
                obs, _ = env.reset(seed=tc.seed * 1_000_003 + counters["episodes"])
                if not hg:
                    expert.reset()
            else:
                obs = next_obs
            step = counters["env_steps"]
            if step % algo_cfg.round_steps == 0 or step == tc.steps:
                if round_obs:
                    batch = {k: np.stack([o[k] for o in round_obs]) for k in round_obs[0]}
                    agent.aggregate(batch, np.stack(round_labels))
                    counters["labels"] += len(round_obs)
                    round_obs, round_labels = [], []
                metrics = agent.refit()
                writer.add_scalar("train/loss", metrics.get("loss", 0.0), step)
                writer.add_scalar("train/labels", counters["labels"], step)
                rate = counters["successes"] / max(counters["episodes"], 1)
                bar.update(task, completed=step, stats=f"success {rate:.0%}  labels {agent.num_samples}")
    env.close()
    experiment = config.model_dump(mode="json")
    save_checkpoint(out / "checkpoints" / f"step_{tc.steps}.pt", agent, experiment, counters=counters)
    result = final_evaluation(config, lambda o: agent.act(o), out, out / "checkpoints" / f"step_{tc.steps}.pt",
                              show_progress)
    writer.add_scalar("eval/success_rate", result.success_rate, tc.steps)
    writer.close()
    write_metrics(out, result, counters, algo=algo_cfg.name, env=config.env.id,
                  train_seconds=round(time.perf_counter() - started, 2))
    return result
