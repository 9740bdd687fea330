"""Evaluate a policy it is given: success rate, return, optional mp4.

Nothing here reads a run folder: :mod:`hilrl.runtime.run` finds and loads a run's policy
(:func:`~hilrl.runtime.run.load_policy`, :func:`~hilrl.runtime.run.evaluate_run` for ``hilrl eval``)
and records the results strategies hand it (:meth:`~hilrl.runtime.run.RunFolder.finish`).

Evaluations during training (and ``train.keep_best``'s choice among them) run on ``VALIDATION_SEED``
on, so the final evaluation's seeds (``TEST_SEED`` on) stay unseen by the choice (:mod:`hilrl.runtime.seeds`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from hilrl.config import ExperimentConfig
from hilrl.data.video import VideoWriter
from hilrl.envs.make import make_env
from hilrl.runtime.progress import make_progress
from hilrl.runtime.rollout import ActFn, RolloutStats, run_episode
from hilrl.runtime.seeds import TEST_SEED


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


def final_evaluation(config: ExperimentConfig, algo: Any, checkpoint: str | os.PathLike,
                     video: str | os.PathLike | None = None, show_progress: bool = True) -> EvalResult:
    """The end of every strategy: ``train.eval_episodes`` test episodes of ``algo``'s deterministic policy
    (``algo.act(obs, deterministic=True)``), the first ones to ``video`` when given, labelled with the
    ``checkpoint`` the policy came from. The strategy hands the result to the run folder
    (:meth:`hilrl.runtime.run.RunFolder.finish`)."""
    result = evaluate_policy(config.env, lambda obs: algo.act(obs, deterministic=True), config.train.eval_episodes,
                             video=video, show_progress=show_progress)
    result.checkpoint = str(checkpoint)
    return result
