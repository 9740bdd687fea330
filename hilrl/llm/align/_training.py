"""What TRL's trainers share here: CPU settings, training steps shown in the caller's progress display,
TensorBoard in one folder (``OUT/tensorboard``), and held-out figures counted per pair."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["callbacks", "common_args", "full_precision", "pair_figures", "quiet_hub", "quiet_trainer", "run_trainer",
           "say"]


def quiet_hub() -> None:
    """Offline and quiet: the hub stays offline, telemetry off (a config-built model must never be fetched), and
    the per-stage progress bars of datasets, transformers and TRL are off (the caller's display stays)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's per-stage bars (reference log-probs...)
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    # TRL 1.16 still calls transformers' gradient_checkpointing names, deprecated in 5.x: noise, not a problem
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")


def say(progress: Any, text: str) -> None:
    """One status line (what is loading, what runs next) above ``progress``, a rich ``Progress``; nothing when
    ``progress`` is None (quiet)."""
    if progress is not None:
        progress.console.print(text, markup=False, highlight=False, soft_wrap=True)


def quiet_trainer(trainer: Any) -> None:
    """No per-step dict printed on stdout (transformers' PrinterCallback); the progress display and TensorBoard stay."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def common_args(out: Path, seed: int, batch_size: int, learning_rate: float, epochs: float,
                max_steps: int | None) -> dict[str, Any]:
    """Keyword arguments every trainer config here gets (TrainingArguments fields)."""
    return {"output_dir": str(out), "seed": seed, "data_seed": seed, "per_device_train_batch_size": batch_size,
            "per_device_eval_batch_size": batch_size, "learning_rate": learning_rate, "num_train_epochs": epochs,
            "max_steps": max_steps if max_steps else -1, "use_cpu": True, "report_to": "none", "logging_steps": 1,
            "save_strategy": "no", "disable_tqdm": True, "dataloader_num_workers": 0, "lr_scheduler_type": "constant",
            "warmup_steps": 0}


def callbacks(out: Path, progress: Any, title: str) -> list[Any]:
    """TensorBoard scalars under ``out/tensorboard`` and, when ``progress`` (a rich ``Progress``, e.g.
    ``hilrl.runtime.progress.make_progress()``) is given, one task in it counting the optimiser steps."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    # transformers' TensorBoardCallback closes its writer at the end of training and, on a later log (an
    # evaluate()), opens a new one in its logging_dir, by default OUT/runs/<date>_<host> (integration_utils.py,
    # default_logdir): naming the folder instead of handing it a writer keeps every event file in one folder
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(out / "tensorboard")
    if progress is None:
        return [tensorboard]

    class StepProgress(TrainerCallback):
        """Steps and loss move together: every step logs (``logging_steps=1``), after its ``on_step_end``."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.task = progress.add_task(title, total=state.max_steps, stats="")

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                progress.update(self.task, completed=state.global_step, stats=f"loss {logs['loss']:.4f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            progress.update(self.task, completed=state.global_step)

    return [tensorboard, StepProgress()]


def full_precision(model: Any) -> Any:
    """``model`` (in place) without the bf16 autocast wrapper accelerate puts around the forward of the models a
    Trainer prepares (TRL's configs default to ``bf16=True``, trl/trainer/base_config.py): the held-out pairs
    are scored as the saved float32 weights score them, and the returned model runs in float32. (accelerate's
    ``extract_model_from_parallel`` with ``keep_fp32_wrapper=False``, what ``Accelerator.unwrap_model`` calls.)"""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False)


def pair_figures(chosen: Any, rejected: Any) -> dict[str, float]:
    """Held-out figures counted per pair from each pair's reward of its chosen and its rejected answer:
    ``pairs`` (n), ``correct`` (k, the pairs whose chosen answer scores strictly above the rejected one),
    ``accuracy`` = k/n, ``margin`` (the mean over pairs of chosen − rejected) and the mean ``chosen`` and
    ``rejected`` rewards. TRL's trainers log the mean of per-batch means instead, which is not k/n when the
    last batch is smaller (10 pairs in batches of 8 and 2)."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    correct = int(np.sum(chosen > rejected))
    return {"pairs": len(chosen), "correct": correct, "accuracy": correct / len(chosen),
            "margin": float(np.mean(chosen - rejected)), "chosen": float(np.mean(chosen)),
            "rejected": float(np.mean(rejected))}


def run_trainer(trainer: Any, settings: Any, out: Path,
                held_out: Callable[[Any], tuple[dict[str, float], list[dict[str, float]]]] | None
                ) -> tuple[dict[str, float], list[dict[str, float]], float]:
    """Train quietly, then score the held-out pairs with ``held_out(trained model)`` (in full precision: see
    :func:`full_precision`), which returns the figures and one dict per pair; writes ``out/metrics.json`` (the
    settings, the held-out figures and pairs, wall time, steps, TRL's log) and the figures to TensorBoard as
    ``eval/<name>`` at the last step. Returns ``(held-out figures, held-out pairs, training wall seconds)``."""
    quiet_trainer(trainer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    figures: dict[str, float] = {}
    pairs: list[dict[str, float]] = []
    model = full_precision(trainer.model)
    if held_out is not None:
        figures, pairs = held_out(model)
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            for name, value in figures.items():
                writer.add_scalar(f"eval/{name}", value, trainer.state.global_step)
    (out / "metrics.json").write_text(json.dumps({"settings": asdict(settings), "held_out": figures,
                                                  "held_out_pairs": pairs, "train_wall_s": round(wall, 3),
                                                  "steps": trainer.state.global_step,
                                                  "history": trainer.state.log_history}, indent=1, default=str))
    return figures, pairs, wall
