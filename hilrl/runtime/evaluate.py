"""Evaluate a trained policy: success rate, return, optional mp4."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hilrl.config import ExperimentConfig
from hilrl.data.video import VideoWriter
from hilrl.envs.make import make_env
from hilrl.errors import HilrlError
from hilrl.policies.registry import make_algorithm
from hilrl.runtime.progress import make_progress
from hilrl.runtime.rollout import ActFn, RolloutStats, run_episode
from hilrl.runtime.run import BEST_CHECKPOINT, load_checkpoint, step_checkpoints
from hilrl.runtime.seeds import TEST_SEED, VALIDATION_SEED


@dataclass
class EvalResult:
    success_rate: float
    mean_return: float
    episodes: int
    mean_length: float
    checkpoint: str = ""
    video: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(
    env_config: Any,
    act: ActFn,
    episodes: int,
    seed: int = TEST_SEED,
    video: str | os.PathLike | None = None,
    video_episodes: int = 3,
    show_progress: bool = True,
) -> EvalResult:
    """Run ``episodes`` seeded episodes (seeds ``seed, seed+1, ...``); the first ``video_episodes`` go to ``video``.

    The default seed range starts at 10 000 so evaluation never reuses the
    seeds demos are recorded with (0, 1, ...).
    """
    env = make_env(env_config)
    stats = RolloutStats.empty()
    writer = VideoWriter(video, fps=env_config.control_hz) if video else None
    try:
        with make_progress(not show_progress) as bar:
            task = bar.add_task("eval", total=episodes, stats="")
            for i in range(episodes):
                sink = writer if writer is not None and i < video_episodes else None
                stats.add(run_episode(env, act, seed=seed + i, record_states=False, on_frame=sink))
                bar.update(task, advance=1, stats=f"success {stats.success_rate:.0%}")
    finally:
        env.close()
        if writer is not None:
            writer.close()
    return EvalResult(
        success_rate=stats.success_rate,
        mean_return=stats.mean_return,
        episodes=stats.episodes,
        mean_length=float(sum(stats.lengths) / max(len(stats.lengths), 1)),
        video=str(video) if video else None,
    )


def final_evaluation(config: ExperimentConfig, act: ActFn, out: str | os.PathLike, checkpoint: str | os.PathLike,
                     show_progress: bool = True) -> EvalResult:
    """The end of every training loop: ``train.eval_episodes`` test episodes of ``act`` (with ``train.video``, the
    first ones go to ``OUT/final_policy.mp4``), labelled with the ``checkpoint`` the policy came from."""
    tc = config.train
    result = evaluate_policy(config.env, act, tc.eval_episodes, video=Path(out) / "final_policy.mp4" if tc.video else None,
                             show_progress=show_progress)
    result.checkpoint = str(checkpoint)
    return result


def write_metrics(out: str | os.PathLike, result: EvalResult | None, counters: dict[str, Any] | None = None,
                  **facts: Any) -> dict[str, Any]:
    """Write ``OUT/metrics.json`` (temp file + rename): the final evaluation, the run's facts and its counters.

    The training loop's episode counter is written as ``train_episodes`` so that
    ``episodes`` always means the evaluation's episode count.
    """
    counters = dict(counters or {})
    if "episodes" in counters:
        counters["train_episodes"] = counters.pop("episodes")
    summary = {**(result.to_dict() if result is not None else {}), **facts, **counters}
    path = Path(out) / "metrics.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return summary


# Evaluations during training (and train.keep_best's choice among them) run on VALIDATION_SEED on, so
# the final evaluation's seeds (TEST_SEED on) stay unseen by the choice (hilrl.runtime.seeds).
__all__ = ["BEST_CHECKPOINT", "TEST_SEED", "VALIDATION_SEED", "EvalResult", "evaluate_policy", "evaluate_run",
           "final_evaluation", "latest_checkpoint", "load_policy", "policy_checkpoint", "write_metrics"]


def policy_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """The checkpoint that is a run's policy: ``checkpoints/best.pt`` if the run kept its best
    (``train.keep_best``), else the newest ``step_N.pt``; a checkpoint file is itself."""
    path = Path(run_or_checkpoint)
    best = path / "checkpoints" / BEST_CHECKPOINT
    return best if path.is_dir() and best.is_file() else latest_checkpoint(path)


def latest_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A checkpoint file itself, or the newest one in ``RUN_DIR/checkpoints``."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path
    if not path.exists():
        raise HilrlError(f"{path}: no such run folder or checkpoint")
    candidates = step_checkpoints(path)
    if not candidates:
        raise HilrlError(f"{path}: no checkpoints in {path / 'checkpoints'}; was the run trained with `hilrl train`?")
    return candidates[-1]


def load_policy(run_or_checkpoint: str | os.PathLike) -> tuple[ExperimentConfig, Any, Path]:
    """Rebuild the experiment config and the trained algorithm from a run folder (:func:`policy_checkpoint`)
    or a checkpoint."""
    ckpt_path = policy_checkpoint(run_or_checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    config = ExperimentConfig.model_validate(ckpt["experiment"])
    env = make_env(config.env)
    try:
        algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=config.train.seed)
    finally:
        env.close()
    algo.load_state_dict(ckpt["state"])
    return config, algo, ckpt_path


def evaluate_run(
    run_or_checkpoint: str | os.PathLike,
    episodes: int = 50,
    seed: int = TEST_SEED,
    video: str | os.PathLike | None = None,
    video_episodes: int = 5,
    show_progress: bool = True,
) -> EvalResult:
    """`hilrl eval`: load the run's policy checkpoint (:func:`policy_checkpoint`) and evaluate it deterministically."""
    torch.set_num_threads(1)
    config, algo, ckpt_path = load_policy(run_or_checkpoint)
    result = evaluate_policy(
        config.env, lambda obs: algo.act(obs, deterministic=True), episodes, seed=seed, video=video,
        video_episodes=video_episodes, show_progress=show_progress,
    )
    result.checkpoint = str(ckpt_path)
    return result
