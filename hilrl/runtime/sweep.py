"""`hilrl sweep`: a grid of runs of one experiment (seeds × settings), one run folder each, and a summary table.

``hilrl sweep CONFIG --seeds 0 1 2 --set algo.utd=1,4 --out runs/sweep`` trains every combination of the
``--set`` values (``KEY=V1,V2,...``; a key given one value changes every run alike and names no folder) for
every seed, each run as ``hilrl train CONFIG --set ... --seed S --out OUT/<setting>/seed_S`` would, on

* ``backend="local"``: a process pool of ``workers`` processes on this machine (what the benchmark scripts'
  ``--workers`` pools do), or
* ``backend="ray"``: one Ray task per run (``num_cpus=1``) on the cluster at ``address`` / ``RAY_ADDRESS``, else
  a local Ray with ``workers`` CPUs; a task whose node dies is retried, and continues from the run's checkpoint.

Resumable: a finished run (:func:`hilrl.runtime.run.finished_steps`) is skipped, an unfinished one continues
from its newest checkpoint (``hilrl train``'s own resume), so the same command run again finishes the grid.
Then ``OUT/summary.md`` and ``OUT/summary.json``: per setting, the mean ± std over seeds of the final
evaluation's success rate and return (the sample std, ``ddof=1``, as in rliable's and most papers' tables).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hilrl.config import ConfigError, Override, load_config, parse_override
from hilrl.errors import HilrlError

BACKENDS = ("local", "ray")
SUMMARY_METRICS = ("success_rate", "mean_return")
TASK_RETRIES = 2  # a Ray task lost with its node runs again, resuming its run folder


@dataclass(frozen=True)
class SweepRun:
    """One run of the grid.

    :param setting: the ``(key, value)`` pairs of the keys the grid varies, in the order the ``--set`` options came
    :param seed: its ``train.seed``
    :param out: its run folder
    :param common: the ``(key, value)`` pairs of the keys given one value, the same in every run
    """

    setting: tuple[tuple[str, Any], ...]
    seed: int
    out: Path
    common: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return setting_label(self.setting)

    def overrides(self) -> list[Override]:
        return [Override(key, value, f"--set {key}={value}") for key, value in (*self.common, *self.setting)] + [
            Override("train.seed", self.seed, f"--seeds {self.seed}")]


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: per run its metrics (or error), and the summary rows per setting."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [run for run in self.runs if run["status"] == "failed"]


def setting_label(setting: tuple[tuple[str, Any], ...]) -> str:
    """``algo.utd=4,train.gamma=0.9`` (``default`` when the grid varies nothing): a run folder's name, a table row."""
    text = ",".join(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for key, value in setting)
    return text.replace("/", "_").replace(" ", "") or "default"


def split_values(text: str) -> list[str]:
    """``1,4`` -> ``['1', '4']``; commas inside ``[...]``, ``{...}`` or quotes stay (``[a,b],[c]`` is two values)."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return values


def parse_grid(sets: list[str]) -> list[tuple[str, list[Any]]]:
    """The ``--set KEY=V1,V2`` options as ``(key, [values])``, each value read as YAML like ``hilrl train --set``."""
    grid: list[tuple[str, list[Any]]] = []
    for text in sets:
        key, _, values = text.partition("=")
        parsed = [parse_override(f"{key}={value}") for value in split_values(values)]
        if any(key == seen for seen, _ in grid):
            raise ConfigError(f"--set {text}: {key} is set twice; give its values once, comma-separated "
                              f"(--set {key}=V1,V2)")
        grid.append((parsed[0].key, [p.value for p in parsed]))
    return grid


def plan(config: str | os.PathLike, seeds: list[int], sets: list[str], out: str | os.PathLike) -> list[SweepRun]:
    """Every run of the grid, each config validated now (a bad value is named before anything trains)."""
    if not seeds:
        raise HilrlError("--seeds: give at least one seed, e.g. --seeds 0 1 2")
    if len(set(seeds)) != len(seeds):
        raise HilrlError(f"--seeds {' '.join(map(str, seeds))}: a seed is repeated")
    grid = parse_grid(sets)
    common = tuple((key, values[0]) for key, values in grid if len(values) == 1)
    varied = [(key, values) for key, values in grid if len(values) > 1]
    runs = []
    for values in itertools.product(*(values for _, values in varied)):
        setting = tuple(zip([key for key, _ in varied], values))
        for seed in seeds:
            run = SweepRun(setting, seed, Path(out) / setting_label(setting) / f"seed_{seed}", common)
            experiment = load_config(config, run.overrides())
            if experiment.runtime.backend == "ray":
                raise HilrlError(f"{config}: runtime.backend ray starts a Ray fleet per run; sweep its runs with "
                                 "runtime.backend local (--set runtime.backend=local), one process per run")
            runs.append(run)
    return runs


def run_one(config: str, run: SweepRun, cwd: str | None = None) -> dict[str, Any]:
    """Train one run of the grid in this process (skipped when finished, resumed when started); its metrics."""
    import torch

    from hilrl.runtime.run import finished_steps
    from hilrl.runtime.train import train

    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(1)
    experiment = load_config(config, run.overrides())
    started = time.perf_counter()
    status = "skipped" if finished_steps(experiment, run.out) is not None else "trained"
    if status == "trained":
        train(experiment, run.out, show_progress=False)
    metrics = json.loads((run.out / "metrics.json").read_text())
    return {"setting": run.label, "seed": run.seed, "out": str(run.out), "status": status,
            "seconds": round(time.perf_counter() - started, 2), **{k: metrics.get(k) for k in
                                                                 (*SUMMARY_METRICS, "env_steps")}}


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: seeds done, and mean and std over them of each of :data:`SUMMARY_METRICS`."""
    rows = []
    for label in dict.fromkeys(run["setting"] for run in runs):
        done = [run for run in runs if run["setting"] == label and run["status"] != "failed"]
        row: dict[str, Any] = {"setting": label, "seeds": len(done),
                               "failed": sum(run["setting"] == label for run in runs) - len(done)}
        for metric in SUMMARY_METRICS:
            values = np.array([run[metric] for run in done], dtype=float)
            row[metric] = float(values.mean()) if len(values) else None
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | seeds | success rate | mean return |", "|---|---|---|---|"]
    for row in rows:
        if row["success_rate"] is None:
            lines.append(f"| {row['setting']} | 0 ({row['failed']} failed) | - | - |")
            continue
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        lines.append(f"| {row['setting']} | {row['seeds']}{failed} | {row['success_rate']:.0%} ± "
                     f"{row['success_rate_std']:.0%} | {row['mean_return']:.2f} ± {row['mean_return_std']:.2f} |")
    return "\n".join(lines) + "\n"


def run_sweep(config: str | os.PathLike, seeds: list[int], sets: list[str], out: str | os.PathLike,
              backend: str = "local", workers: int = 2, address: str | None = None,
              on_run: Any = None) -> SweepResult:
    """Train the grid (module docstring) and write ``OUT/summary.md`` and ``OUT/summary.json``.

    :param config: the experiment YAML
    :param seeds: ``train.seed`` of each run of a setting
    :param sets: ``KEY=V1,V2`` texts; every combination of their values is a setting
    :param out: the sweep's folder; run ``OUT/<setting>/seed_S``
    :param backend: ``local`` (process pool) or ``ray``
    :param workers: runs at once on the local pool, and the CPUs of a local Ray
    :param address: the Ray cluster (``backend="ray"``); None = ``RAY_ADDRESS``, else a local Ray for the sweep
    :param on_run: called with each run's record as it ends (progress)
    """
    if backend not in BACKENDS:
        raise HilrlError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise HilrlError(f"--workers {workers}: run at least one at a time")
    config = str(config)
    runs = plan(config, seeds, sets, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records = (_run_ray if backend == "ray" else _run_pool)(config, runs, workers, address, on_run)
    order = {run.out.as_posix(): i for i, run in enumerate(runs)}
    records.sort(key=lambda record: order[Path(record["out"]).as_posix()])  # the grid's order, not the finish order
    result = SweepResult(runs=records, rows=summarise(records), wall_seconds=round(time.perf_counter() - started, 2))
    summary = {"config": config, "seeds": seeds, "sets": sets, "backend": backend, "workers": workers,
               "wall_seconds": result.wall_seconds, "rows": result.rows, "runs": records}
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
    (Path(out) / "summary.md").write_text(summary_markdown(result.rows))
    return result


def _failed(run: SweepRun, exc: BaseException) -> dict[str, Any]:
    return {"setting": run.label, "seed": run.seed, "out": str(run.out), "status": "failed",
            "error": f"{exc.__class__.__name__}: {exc}"}


def _finish(records: list, record: dict[str, Any], on_run: Any) -> None:
    records.append(record)
    if on_run is not None:
        on_run(record)


def _run_pool(config: str, runs: list[SweepRun], workers: int, address: str | None, on_run: Any) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    records: list[dict[str, Any]] = []
    # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang it)
    with ProcessPoolExecutor(max_workers=min(workers, len(runs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_one, config, run): run for run in runs}
        for future in as_completed(futures):
            try:
                record = future.result()
            except Exception as exc:  # one failed run does not stop the grid; it is reported
                record = _failed(futures[future], exc)
            _finish(records, record, on_run)
    return records


def _run_ray(config: str, runs: list[SweepRun], workers: int, address: str | None, on_run: Any) -> list[dict]:
    from hilrl.runtime.distributed.ray_backend import ray_session, worker_env

    records: list[dict[str, Any]] = []
    with ray_session(address, num_cpus=workers) as ray:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, runtime_env={"env_vars": worker_env()})(run_one)
        pending = {task.remote(config, run, os.getcwd()): run for run in runs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done[0])
            try:
                record = ray.get(done[0])
            except Exception as exc:  # ray.exceptions.RayTaskError wraps the run's own error
                record = _failed(run, exc)
            _finish(records, record, on_run)
    return records
