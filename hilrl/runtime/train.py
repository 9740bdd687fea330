"""`hilrl train`: one run folder per experiment, holding config, demos, scalars, checkpoints, metrics and video.

Run folder layout::

    OUT/config.yaml          the resolved config (every default filled in)
    OUT/demos.hdf5           demos recorded for this run (when the config names no file)
    OUT/tb/                  TensorBoard scalars
    OUT/checkpoints/step_N.pt  (temp file + rename)
    OUT/metrics.json         final evaluation
    OUT/final_policy.mp4     the final policy's first evaluation episodes
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from hilrl.config import ExperimentConfig, dump_config, load_config
from hilrl.data.hdf5 import read_episodes
from hilrl.envs.make import make_env
from hilrl.errors import HilrlError
from hilrl.policies.registry import make_algorithm, save_checkpoint
from hilrl.runtime.evaluate import EvalResult, final_evaluation, write_metrics
from hilrl.runtime.progress import make_progress
from hilrl.runtime.record import record_demos


def _demo_episodes(config: ExperimentConfig, out: Path, show_progress: bool) -> list:
    if config.demos.path:
        return read_episodes(config.demos.path)
    path = out / "demos.hdf5"
    if path.exists():  # a resumed run keeps the demos it recorded
        return read_episodes(path)
    record_demos(
        config.env, path, config.demos.episodes, noise=config.demos.noise, seed=config.train.seed * 100_000,
        show_progress=show_progress,
    )
    return read_episodes(path)


def _changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumped configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_settings(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_same_run(config: ExperimentConfig, out: Path) -> None:
    """Refuse a folder that holds another experiment's run; only ``train.steps`` may change (``--steps MORE``).

    Why: a folder with checkpoints (or a learner's log) is resumed, and its ``config.yaml`` is
    the record of what was run; a different config would mix two experiments in one run and
    overwrite that record.
    """
    saved = out / "config.yaml"
    started = any((out / "checkpoints").glob("step_*.pt")) or (out / "log").is_dir()
    if not saved.is_file() or not started:
        return
    old = load_config(saved).model_dump(mode="json")
    new = config.model_dump(mode="json")
    old["train"]["steps"] = new["train"]["steps"]
    changed = _changed_settings(old, new)
    if changed:
        raise HilrlError(f"{out} holds a run of another config ({'; '.join(changed)}); it would be resumed under "
                         f"the new settings and its config.yaml overwritten. Pass a new --out folder, or put those "
                         f"settings back to continue that run.")


def train(config: ExperimentConfig, out: str | os.PathLike, show_progress: bool = True) -> EvalResult:
    """Train the configured algorithm, checkpoint it, evaluate it and write the run folder.

    Offline algorithms (BC) train on the demos; the others run the online loop
    (:mod:`hilrl.runtime.online`), which resumes when ``out`` already holds a checkpoint;
    ``runtime: distributed`` runs it as a learner with actor processes (:mod:`hilrl.runtime.learner`).
    ``sb3.*`` algorithms run SB3's own loop (:mod:`hilrl.runtime.sb3_loop`).
    """
    distributed = config.runtime.mode == "distributed"
    if distributed and config.algo.name != "sac":
        raise HilrlError(f"runtime: distributed trains algo.name: sac, not {config.algo.name!r}; "
                         "use runtime: local for the others")
    if config.train.keep_best and (config.algo.name != "sac" or distributed or not config.train.eval_every):
        raise HilrlError("train.keep_best works in the online SAC loop (algo.name: sac, runtime: local) with "
                         "train.eval_every > 0; remove it or change those settings")
    sb3 = config.algo.name.startswith("sb3.")
    if sb3:
        from hilrl.runtime.sb3_loop import check_sb3_experiment

        check_sb3_experiment(config, out)  # before any demo is recorded
    out = Path(out)
    check_same_run(config, out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.train.threads)
    dump_config(config, out / "config.yaml")
    episodes = _demo_episodes(config, out, show_progress) if config.demos.path or config.demos.episodes else []
    if config.algo.name == "bc":
        return _train_offline(config, out, episodes, show_progress)
    if config.algo.name in ("dagger", "hg_dagger"):
        from hilrl.runtime.dagger import train_dagger

        return train_dagger(config, out, episodes, show_progress)
    if sb3:
        from hilrl.runtime.sb3_loop import train_sb3

        return train_sb3(config, out, episodes, show_progress)
    if distributed:
        from hilrl.runtime.learner import train_distributed

        return train_distributed(config, out, episodes, show_progress)
    from hilrl.runtime.online import train_rl

    return train_rl(config, out, episodes, show_progress)


def _train_offline(config: ExperimentConfig, out: Path, episodes: list, show_progress: bool) -> EvalResult:
    from torch.utils.tensorboard import SummaryWriter

    experiment = config.model_dump(mode="json")
    env = make_env(config.env)
    algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=config.train.seed)
    env.close()
    samples = algo.set_dataset(episodes)

    writer = SummaryWriter(str(out / "tb"))
    started = time.perf_counter()
    with make_progress(not show_progress) as bar:
        task = bar.add_task(f"train {config.algo.name}", total=config.train.steps, stats=f"{samples} samples")
        for step in range(1, config.train.steps + 1):
            metrics = algo.train_step()
            if step % config.train.log_every == 0 or step == config.train.steps:
                for key, value in metrics.items():
                    writer.add_scalar(f"train/{key}", value, step)
                rate = step / (time.perf_counter() - started)
                bar.update(task, completed=step, stats=f"loss {metrics['loss']:.4f}  {rate:.0f} updates/s")
            if step % config.train.checkpoint_every == 0 or step == config.train.steps:
                save_checkpoint(out / "checkpoints" / f"step_{step}.pt", algo, experiment)
    train_seconds = time.perf_counter() - started

    result = final_evaluation(config, lambda obs: algo.act(obs, deterministic=True), out,
                              out / "checkpoints" / f"step_{config.train.steps}.pt", show_progress)
    writer.add_scalar("eval/success_rate", result.success_rate, config.train.steps)
    writer.add_scalar("eval/mean_return", result.mean_return, config.train.steps)
    writer.close()
    write_metrics(out, result, algo=config.algo.name, env=config.env.id, train_steps=config.train.steps,
                  demo_episodes=len(episodes), demo_samples=samples, train_seconds=round(train_seconds, 2))
    return result
