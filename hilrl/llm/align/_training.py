"""What TRL's trainers share here: CPU settings, a rich progress bar and TensorBoard under ``OUT/tensorboard``."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["callbacks", "common_args", "quiet_hub", "quiet_trainer", "run_trainer"]


def quiet_hub() -> None:
    """Offline and quiet: the hub stays offline, telemetry off (a config-built model must never be fetched), and
    the per-stage progress bars of datasets, transformers and TRL are off (our rich bar stays)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's per-stage bars (reference log-probs...); ours is rich's
    import datasets
    from transformers.utils import logging

    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    # TRL 1.16 still calls transformers' gradient_checkpointing names, deprecated in 5.x: noise, not a problem
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*gradient_checkpointing.*")


def quiet_trainer(trainer: Any) -> None:
    """No per-step dict printed on stdout (transformers' PrinterCallback); the progress bar and TensorBoard stay."""
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


def callbacks(out: Path, progress: bool, title: str) -> list[Any]:
    """TensorBoard scalars under ``out/tensorboard`` and, when ``progress``, a rich progress bar."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    found = [TensorBoardCallback(tb_writer=SummaryWriter(str(out / "tensorboard")))]
    if not progress:
        return found

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task(title, total=state.max_steps, loss="")
            self.bar.start()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if self.bar is not None and logs and "loss" in logs:
                self.bar.update(self.task, loss=f"loss {logs['loss']:.4f}")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return [*found, RichProgress()]


def run_trainer(trainer: Any, settings: Any, out: Path, evaluate: bool) -> tuple[dict[str, float], float]:
    """Train quietly, then evaluate on the held-out set when ``evaluate``; writes ``out/metrics.json`` (the
    settings, held-out metrics without their ``eval_`` prefix, wall time, steps, TRL's log). Returns
    ``(held-out metrics, training wall seconds)``."""
    quiet_trainer(trainer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    held = {}
    if evaluate:
        held = {k.removeprefix("eval_"): float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    (out / "metrics.json").write_text(json.dumps({"settings": asdict(settings), "held_out": held,
                                                  "train_wall_s": round(wall, 3), "steps": trainer.state.global_step,
                                                  "history": trainer.state.log_history}, indent=1, default=str))
    return held, wall
