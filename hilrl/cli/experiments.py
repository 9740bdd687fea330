"""Experiments: `hilrl envs` (the tasks), `hilrl train` (a config's job) and `hilrl eval` (a trained policy)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from hilrl.cli.common import load_experiment, out, set_option


def envs() -> None:
    """List the registered tasks with their action and observation spaces."""
    import gymnasium as gym

    from hilrl.config import registered_task_ids

    table = Table(title="hilrl tasks")
    for column in ("id", "action", "observation (state mode)", "max steps"):
        table.add_column(column)
    for task_id in registered_task_ids():
        env = gym.make(task_id)
        obs = ", ".join(f"{k}{tuple(s.shape)}" for k, s in env.observation_space.spaces.items())
        act = env.action_space
        table.add_row(task_id, f"Box{tuple(act.shape)} [{act.low.min():g}, {act.high.max():g}]", obs,
                      str(env.unwrapped.max_episode_steps))
        env.close()
    out.print(table)
    out.print("Cameras: add `cameras: [front, wrist]` under `env:` for uint8 (H, W, 3) images.", markup=False)


def train(
    config: Path = typer.Argument(..., help="experiment YAML in sim_configs/"),
    sets: Optional[list[str]] = set_option(),
    steps: Optional[int] = typer.Option(None, help="shorthand for --set train.steps=N: the run's total env steps "
                                                   "(a stopped or finished run in --out continues up to N)"),
    seed: Optional[int] = typer.Option(None, help="shorthand for --set train.seed=S"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<config name>)"),
) -> None:
    """Train the config's algorithm; writes config, scalars, checkpoints, metrics.json and a video.

    A run already in --out continues from its newest checkpoint up to train.steps env steps in all; one that
    has them has nothing to train (hilrl eval evaluates it)."""
    from hilrl.runtime.run import finished_steps
    from hilrl.runtime.train import train as run_training

    cfg = load_experiment(config, sets, [("--steps", "train.steps", steps), ("--seed", "train.seed", seed)])
    run_dir = out_dir or Path("runs") / config.stem
    done = finished_steps(cfg, run_dir)
    if done is not None:
        asked = f"--steps {steps}" if steps is not None else f"train.steps {cfg.train.steps}"
        out.print(f"{run_dir} already has {done} env steps >= {asked}: nothing to train (--steps is the run's "
                  f"total; pass one above {done} to train more); `hilrl eval {run_dir}` evaluates it again",
                  markup=False, highlight=False)
        return
    result = run_training(cfg, run_dir)
    table = Table(title=f"{cfg.algo.name} on {cfg.env.id}")
    for column in ("success rate", "mean return", "episodes", "run folder"):
        table.add_column(column)
    table.add_row(f"{result.success_rate:.0%}", f"{result.mean_return:.2f}", str(result.episodes), str(run_dir))
    out.print(table)
    if result.video:
        out.print(f"video: {result.video}")


def evaluate(
    run: Path = typer.Argument(..., help="run folder (uses its latest checkpoint) or a checkpoint file"),
    episodes: int = typer.Option(50, min=1),
    seed: int = typer.Option(10_000),
    video: Optional[Path] = typer.Option(None, help="write the first episodes to this mp4"),
    video_episodes: int = typer.Option(5, min=1, help="how many episodes the video shows"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Evaluate a trained policy deterministically on seeded episodes."""
    from hilrl.runtime.run import evaluate_run

    result = evaluate_run(run, episodes=episodes, seed=seed, video=video, video_episodes=video_episodes,
                          show_progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    table = Table(title=f"eval {result.checkpoint}")
    for column in ("success rate", "mean return", "mean length", "episodes"):
        table.add_column(column)
    table.add_row(f"{result.success_rate:.0%}", f"{result.mean_return:.2f}", f"{result.mean_length:.1f}",
                  str(result.episodes))
    out.print(table)
    if result.video:
        out.print(f"video: {result.video}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command()(envs)
    app.command()(train)
    app.command(name="eval")(evaluate)
