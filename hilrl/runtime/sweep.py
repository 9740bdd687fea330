"""`hilrl sweep`: a grid of runs of one experiment (seeds × settings), one run folder each, and a summary table.

``hilrl sweep CONFIG --seeds 0 1 2 --set algo.utd=1,4 --out runs/sweep`` trains every combination of the
``--set`` values (``KEY=V1,V2,...``; a key given one value changes every run alike and names no folder) for
every seed, each run as ``hilrl train CONFIG --set ... --seed S --out OUT/<setting>/seed_S`` would, on

* ``backend="local"``: a process pool of ``workers`` processes on this machine, or
* ``backend="ray"``: one Ray task per run (``num_cpus=1``) on the cluster at ``address`` / ``RAY_ADDRESS``, else
  a local Ray with ``workers`` CPUs; a task whose node dies is retried, and continues from the run's checkpoint.

Resumable: a finished run (:func:`hilrl.runtime.run.finished_steps`) is skipped, an unfinished one continues
from its newest checkpoint (``hilrl train``'s own resume), so the same command run again finishes the grid.
Then ``OUT/summary.md`` and ``OUT/summary.json``: per setting, the mean ± std over seeds of the final
evaluation's success rate and return (the sample std, ``ddof=1``, as in rliable's and most papers' tables).

:func:`run_grid` is the part that runs a grid, on either backend: a list of :class:`GridCell` (a picklable
function, its arguments, its folder), each called once in a worker, a failed one reported and the others run
on, a finished one skipped when the grid runs again. :func:`run_sweep` gives it the ``hilrl train`` runs of a
config; the benchmark scripts (``benchmarks/sample_efficiency.py``, ``rlif_vs_dagger.py``,
``external_envs.py``: ``--backend local|ray --workers N``) give it their own cells, whose jobs are not one config
file's runs (two learners' configs side by side, BC and DAgger with their own budgets, a table per cell).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
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
CELL_RECORD = "grid_cell.json"  # a finished cell's record, in its folder


@dataclass(frozen=True)
class GridCell:
    """One cell of a grid for :func:`run_grid`: ``fn(*args)`` called in a worker process, writing into ``out``.

    :param fn: the cell's job, returning its record (a JSON-able dict: a benchmark's table row); a module-level
        function, so that it pickles (a script's own functions do: the local pool re-imports the script, Ray
        ships ``__main__``'s functions by value)
    :param args: its arguments (picklable); with ``fn``'s name they are the cell's fingerprint, which a finished
        cell's record must match to be skipped
    :param out: the cell's folder (a run folder); its record is kept in ``out/grid_cell.json``
    :param label: the setting the cell belongs to (a row of a summary)
    :param seed: its seed
    """

    fn: Callable[..., dict[str, Any]]
    args: tuple
    out: str | os.PathLike
    label: str = "default"
    seed: int | None = None

    @property
    def fingerprint(self) -> str:
        text = json.dumps([self.fn.__qualname__, self.args], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()


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


def run_one(config: str, run: SweepRun) -> dict[str, Any]:
    """Train one run of the grid in this process (skipped when finished, resumed when started); its metrics."""
    from hilrl.runtime.run import finished_steps
    from hilrl.runtime.train import train

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
    check_backend(backend, workers)
    config = str(config)
    runs = plan(config, seeds, sets, out)
    Path(out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # each run continues or skips its own run folder (finished_steps): no cell record on top of it
    cells = [GridCell(run_one, (config, run), run.out, run.label, run.seed) for run in runs]
    records = run_grid(cells, backend, workers, address, on_run, skip_finished=False)
    result = SweepResult(runs=records, rows=summarise(records), wall_seconds=round(time.perf_counter() - started, 2))
    summary = {"config": config, "seeds": seeds, "sets": sets, "backend": backend, "workers": workers,
               "wall_seconds": result.wall_seconds, "rows": result.rows, "runs": records}
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1))
    (Path(out) / "summary.md").write_text(summary_markdown(result.rows))
    return result


def check_backend(backend: str, workers: int) -> None:
    """A clear error for an unknown ``--backend`` or ``--workers`` below 1, before anything runs."""
    if backend not in BACKENDS:
        raise HilrlError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise HilrlError(f"--workers {workers}: run at least one at a time")


def run_grid(cells: Sequence[GridCell], backend: str = "local", workers: int = 2, address: str | None = None,
             on_run: Callable[[dict[str, Any]], None] | None = None,
             skip_finished: bool = True) -> list[dict[str, Any]]:
    """Run every cell once, ``workers`` at a time on a local process pool or one Ray task per cell; their records.

    A record is the cell's own dict with ``setting`` (the cell's label), ``seed``, ``out`` and ``status``
    (``done``, ``skipped``, ``failed`` with ``error``, or the status the cell returned) where the cell's dict has
    none. A cell that raises is recorded as failed and the others run on. Each worker process uses one torch
    thread. With ``skip_finished``, a cell whose folder holds the record of a finished cell of the same
    fingerprint (:attr:`GridCell.fingerprint`) is not called again: its saved record comes back as ``skipped``,
    so a grid that was stopped is finished by running it again (a started ``hilrl train`` run continues from its
    checkpoint by itself).

    :param cells: the grid; no two with the same ``out``
    :param backend: ``local`` (a process pool of spawned processes) or ``ray``
    :param workers: cells at once on the local pool, and the CPUs of a local Ray
    :param address: the Ray cluster (``backend="ray"``); None = ``RAY_ADDRESS``, else a local Ray for the grid
    :param on_run: called in this process with each record as its cell ends (progress, a rows file)
    :param skip_finished: skip finished cells (above); ``run_sweep`` turns it off, its runs check their folder
    :returns: the records in the order of ``cells`` (not the order they finished in)
    """
    check_backend(backend, workers)
    folders = [Path(cell.out).as_posix() for cell in cells]
    repeated = sorted({folder for folder in folders if folders.count(folder) > 1})
    if repeated:
        raise HilrlError(f"run_grid: cells share the folder(s) {', '.join(repeated)}; give each cell its own out")
    if not cells:
        return []
    records: list[dict[str, Any] | None] = [None] * len(cells)

    def finish(index: int, record: dict[str, Any]) -> None:
        records[index] = record
        if on_run is not None:
            on_run(record)

    (_run_ray if backend == "ray" else _run_pool)(list(cells), workers, address, skip_finished, finish)
    return [record for record in records if record is not None]


def grid_report(records: list[dict[str, Any]]) -> str:
    """What a script prints after its table: how many cells were skipped as finished before, and each failed
    one with its error; empty when every cell ran and none failed."""
    skipped = sum(record["status"] == "skipped" for record in records)
    failed = [record for record in records if record["status"] == "failed"]
    lines = [f"{skipped} of {len(records)} runs skipped: finished by an earlier run of this command, their saved "
             "rows shown (a new --out runs them again)"] if skipped else []
    if failed:
        lines.append(f"{len(failed)} of {len(records)} runs failed (run the same command again to retry them; "
                     "finished runs are skipped):")
        lines += [f"  {record['setting']} seed {record['seed']} ({record['out']}): {record['error']}"
                  for record in failed]
    return "\n".join(lines)


def run_cell(cell: GridCell, cwd: str | None = None, skip_finished: bool = True) -> dict[str, Any]:
    """One cell in this (worker) process: in ``cwd``, one torch thread, skipped when finished; its record."""
    import torch

    if cwd is not None and os.path.isdir(cwd):
        os.chdir(cwd)  # a Ray worker starts elsewhere; relative run folders are the driver's
    torch.set_num_threads(1)
    saved = Path(cell.out) / CELL_RECORD
    if skip_finished and saved.is_file():
        try:
            kept = json.loads(saved.read_text())
        except (OSError, ValueError):
            kept = {}  # a torn record: the cell runs again
        if kept.get("fingerprint") == cell.fingerprint:
            return {**kept["record"], "status": "skipped"}
    record = {"setting": cell.label, "seed": cell.seed, "out": str(cell.out), "status": "done", **cell.fn(*cell.args)}
    if skip_finished:
        saved.parent.mkdir(parents=True, exist_ok=True)
        partial = saved.with_suffix(".tmp")
        partial.write_text(json.dumps({"fingerprint": cell.fingerprint, "record": record}, default=str))
        partial.replace(saved)
    return record


def _failed(cell: GridCell, exc: BaseException) -> dict[str, Any]:
    return {"setting": cell.label, "seed": cell.seed, "out": str(cell.out), "status": "failed",
            "error": f"{exc.__class__.__name__}: {exc}"}


def _run_pool(cells: list[GridCell], workers: int, address: str | None, skip_finished: bool,
              finish: Callable[[int, dict[str, Any]], None]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: a fresh interpreter per worker (forking a process that holds torch threads can hang it)
    with ProcessPoolExecutor(max_workers=min(workers, len(cells)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, cell, None, skip_finished): i for i, cell in enumerate(cells)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # one failed run does not stop the grid; it is reported
                record = _failed(cells[index], exc)
            finish(index, record)


def _run_ray(cells: list[GridCell], workers: int, address: str | None, skip_finished: bool,
             finish: Callable[[int, dict[str, Any]], None]) -> None:
    from hilrl.runtime.distributed.ray_backend import ray_session, worker_env

    env = worker_env()
    paths = _import_roots(cells)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    with ray_session(address, num_cpus=workers) as ray:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, runtime_env={"env_vars": env})(run_cell)
        pending = {task.remote(cell, os.getcwd(), skip_finished): i for i, cell in enumerate(cells)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            try:
                record = ray.get(done[0])
            except Exception as exc:  # ray.exceptions.RayTaskError wraps the run's own error
                record = _failed(cells[index], exc)
            finish(index, record)


def _import_roots(cells: list[GridCell]) -> list[str]:
    """The folders the cells' functions were imported from, for Ray's workers to import them too (Ray adds only
    the driver script's folder and the working directory; ``__main__``'s functions travel by value)."""
    roots = []
    for cell in cells:
        name = cell.fn.__module__
        file = getattr(sys.modules.get(name), "__file__", None)
        if name == "__main__" or not file or "site-packages" in Path(file).parts:
            continue
        levels = name.count(".") + (Path(file).name == "__init__.py")  # pkg/mod.py: the folder above pkg
        roots.append(str(Path(file).resolve().parents[levels]))
    return list(dict.fromkeys(roots))
