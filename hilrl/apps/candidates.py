"""Candidate trainings of a reward search: each one a short `hilrl train` run, on a local process pool or Ray.

A :class:`CandidateJob` is a complete experiment (with ``reward: {source: code, path: ...}``) and its
folder; :func:`train_candidate` runs it through the run core (:func:`hilrl.runtime.train.train`), then
measures what a reward reflection needs (:func:`reward_traces`) and writes ``result.json`` beside the
run, which a resumed search takes as done. Backends (:func:`run_jobs`): ``serial`` (this process),
``local`` (a ``ProcessPoolExecutor`` of spawned processes sized to the machine, one torch thread each)
and ``ray`` (one Ray task per candidate, ``num_cpus=1``). Every candidate is seeded by its config alone,
so the results are the same whichever backend ran it. A :class:`CandidatePool` takes jobs one by one, so a
search starts training each sample as soon as the LLM has written it, while it writes the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hilrl.errors import HilrlError

__all__ = ["BACKENDS", "CandidateJob", "CandidatePool", "default_workers", "reward_traces", "run_jobs",
           "train_candidate"]

BACKENDS = ("serial", "local", "ray")
RESULT = "result.json"


@dataclass
class CandidateJob:
    """One candidate training.

    Args:
        key: its name in the search (``iter_0/sample_2``).
        folder: its folder; the run folder is ``folder/run``, the result ``folder/result.json``.
        experiment: the experiment as a mapping (validated by the worker).
        code: the reward code (for the component traces), or ``None`` for a run on the env's reward.
        trace_points: how many checkpoints over training the traces have (Eureka: ~10).
    """

    key: str
    folder: str
    experiment: dict[str, Any]
    code: str | None = None
    trace_points: int = 10
    extra: dict[str, Any] = field(default_factory=dict)


def default_workers() -> int:
    """Worker processes for the local pool: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def reward_traces(run_dir: str | os.PathLike, code: str | None, points: int = 10) -> dict[str, Any]:
    """Each reward component, the task score and episode lengths at ``points`` checkpoints over training.

    From what the run stored (its newest online buffer, oldest row first), cut into ``points`` windows of
    env steps: the mean of each component (the code re-run in the sandbox on the window's rows), the
    success rate of the episodes that ended in the window (``terminated``: the tasks end on success) and
    their mean length. As Eureka's reflection samples its training logs (eureka-research/Eureka).
    """
    from hilrl.llm.sandbox import Sandbox

    ckpt = Path(run_dir) / "checkpoints"
    found = sorted(ckpt.glob("replay_online_*.npz"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not found:
        raise HilrlError(f"{run_dir} holds no stored online transitions to trace")
    with np.load(found[-1]) as data:
        arrays = {k.replace("::", "/"): data[k] for k in data.files}
    actions = arrays["actions"]
    obs = {k[4:]: v for k, v in arrays.items() if k.startswith("obs/")}
    next_obs = {k[9:]: v for k, v in arrays.items() if k.startswith("next_obs/")}
    terminated, truncated = arrays["terminated"].astype(bool), arrays["truncated"].astype(bool)
    steps = arrays.get("extras/step")
    windows = [w for w in np.array_split(np.arange(len(actions)), points) if len(w)]
    traces: dict[str, Any] = {"window": int(math.ceil(len(actions) / max(len(windows), 1))), "components": {},
                              "success_rate": [], "episode_length": [], "reward": []}
    sandbox = Sandbox(code) if code is not None else None
    try:
        for rows in windows:
            if sandbox is not None:
                total, parts = sandbox({k: v[rows] for k, v in obs.items()}, actions[rows],
                                       {k: v[rows] for k, v in next_obs.items()})
                traces["reward"].append(float(total.mean()))
                for name, values in parts.items():
                    traces["components"].setdefault(name, []).append(float(values.mean()))
            ends = terminated[rows] | truncated[rows]
            traces["success_rate"].append(float(terminated[rows][ends].mean()) if ends.any() else None)
            traces["episode_length"].append(float((steps[rows][ends] + 1).mean()) if ends.any() and steps is not None
                                            else None)
    finally:
        if sandbox is not None:
            sandbox.close()
    return traces


def train_candidate(job: CandidateJob) -> dict[str, Any]:
    """Train one candidate (in whatever process runs it) and write ``folder/result.json``.

    Returns ``{"key", "status": "trained" | "runtime_error", "fitness", "success_rate", "traces", ...}``;
    a reward that fails while training gives ``runtime_error`` with its traceback (for the LLM).
    """
    import torch

    from hilrl.config import validate_config
    from hilrl.llm.sandbox import CodeError, SandboxError
    from hilrl.runtime.train import train

    torch.set_num_threads(1)
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "run"
    if run_dir.is_dir() and not any((run_dir / "checkpoints").glob("step_*.pt")):
        # stopped before its first checkpoint (perhaps while recording demos): nothing to resume, start again
        import shutil

        shutil.rmtree(run_dir)
    started = time.perf_counter()
    result: dict[str, Any] = {"key": job.key, **job.extra}
    try:
        config = validate_config(job.experiment, source=f"{job.key} experiment")
        train(config, run_dir, show_progress=False)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        best = metrics.get("best_validation") or {}
        result.update(status="trained", success_rate=float(metrics["success_rate"]),
                      mean_return=float(metrics["mean_return"]),
                      fitness=float(max(best.get("success_rate", 0.0), 0.0) if best else metrics["success_rate"]),
                      traces=reward_traces(run_dir, job.code, job.trace_points),
                      video=str(run_dir / "final_policy.mp4") if (run_dir / "final_policy.mp4").is_file() else None)
    except (SandboxError, CodeError) as exc:
        result.update(status="runtime_error", traceback=getattr(exc, "message", str(exc)))
    except Exception as exc:  # noqa: BLE001 (a reward that breaks training in another way is reported, not fatal)
        message = str(exc)
        if "reward" not in message:  # not the reward's fault: a real bug, raise it
            raise
        result.update(status="runtime_error", traceback="".join(traceback.format_exception_only(type(exc), exc)).strip())
    result["seconds"] = round(time.perf_counter() - started, 2)
    _write_json(folder / RESULT, result)
    return result


def load_result(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A finished candidate's result, or ``None``."""
    path = Path(folder) / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def _progress_of(job: CandidateJob) -> str:
    """``N steps, success S`` of a running candidate, read from its run folder."""
    from hilrl.runtime.run import BEST_CHECKPOINT, load_checkpoint, step_checkpoints

    run = Path(job.folder) / "run"
    steps = step_checkpoints(run)
    text = f"{int(steps[-1].stem.split('_')[1])} steps" if steps else "started"
    best = run / "checkpoints" / BEST_CHECKPOINT
    if best.is_file():
        try:
            text += f", success so far {load_checkpoint(best)['best']['success_rate']:.0%}"
        except Exception:  # noqa: BLE001 (being written)
            pass
    return text


class _Display:
    """A table, one row per candidate (or per sample that never became one): its state.

    In a terminal it is live (rich ``Live``); piped to a file, each row's final state is printed as one line
    when it is reached and the whole table once at the end, each on lines of its own."""

    def __init__(self, title: str, show: bool) -> None:
        self.title, self.show = title, show
        self.states: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        self.jobs: dict[str, CandidateJob] = {}
        self._live: Any = None

    def __enter__(self) -> _Display:
        if self.show:
            from hilrl.runtime.progress import console

            if console.is_terminal and not console.is_dumb_terminal:
                from rich.live import Live

                self._live = Live(self._table(), console=console, refresh_per_second=2, transient=False)
                self._live.__enter__()
        return self

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, caption="fitness: the best validation success rate during training")
        table.add_column("candidate")
        if any(self.labels.values()):
            table.add_column("program")
        table.add_column("state")
        for key, state in self.states.items():
            shown = _progress_of(self.jobs[key]) if state == "training" and key in self.jobs else state
            label = [self.labels.get(key, "")] if any(self.labels.values()) else []
            table.add_row(key, *label, shown)
        return table

    def set(self, key: str, state: str, label: str | None = None, final: bool = False) -> None:
        self.states[key] = state
        if label is not None:
            self.labels[key] = label
        if final and self.show and self._live is None:
            from hilrl.runtime.progress import console

            name = f"{key} ({self.labels[key]})" if self.labels.get(key) else key
            console.print(f"{self.title}: {name}: {state}", highlight=False, soft_wrap=True)
        self.refresh()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
        elif self.show and self.states:
            from rich.console import Console

            from hilrl.runtime.progress import console

            wide = Console(file=console.file, width=max(console.width, 120))  # a file has room: no wrapped cells
            wide.print(self._table())


def _done_state(result: dict[str, Any]) -> str:
    if result["status"] == "trained":
        return f"trained: fitness {result['fitness']:.0%}, final test success {result['success_rate']:.0%}"
    return "failed while training: " + result.get("traceback", "").strip().splitlines()[-1][:100]


class CandidatePool:
    """Trains candidates as they are submitted, while the caller goes on (e.g. the LLM writes the next sample).

    ``with CandidatePool(...) as pool: pool.submit(job); ...; results = pool.wait()``. A job whose folder holds a
    ``result.json`` is taken as done. :meth:`note` adds a row for something that is not trained (a refused sample)
    so that the table lists every sample.

    Args:
        backend: ``serial`` (trains in :meth:`submit` itself, nothing overlaps), ``local`` (process pool) or ``ray``.
        workers: parallel trainings (default: the machine's CPUs).
        show_progress: the table (live in a terminal, lines when piped).
        title: the table's title.
        on_result: called with each result as it arrives.

    Raises:
        HilrlError: unknown backend, or Ray missing.
    """

    def __init__(self, backend: str = "local", workers: int | None = None, show_progress: bool = True,
                 title: str = "candidates", on_result: Callable[[dict[str, Any]], None] | None = None) -> None:
        if backend not in BACKENDS:
            raise HilrlError(f"--backend {backend!r}: allowed values are {', '.join(BACKENDS)}")
        self.backend, self.workers, self.on_result = backend, max(1, workers or default_workers()), on_result
        self.display = _Display(title, show_progress)
        self.results: dict[str, dict[str, Any]] = {}
        self._pending: dict[Any, CandidateJob] = {}
        self._pool: Any = None
        self._ray: Any = None
        self._ray_session: Any = None  # ray_session's context, entered with the first Ray job
        self._env: Any = None

    def __enter__(self) -> CandidatePool:
        self.display.__enter__()
        return self

    def note(self, key: str, state: str, label: str | None = None, final: bool = True) -> None:
        """A row of the table that is not a training (``generating``, ``refused: ...``)."""
        self.display.set(key, state, label, final=final)

    def _finished(self, result: dict[str, Any]) -> None:
        self.results[result["key"]] = result
        self.display.set(result["key"], _done_state(result), final=True)
        if self.on_result is not None:
            self.on_result(result)

    def submit(self, job: CandidateJob, label: str | None = None) -> None:
        """Start training ``job`` (or take its earlier result)."""
        self.display.jobs[job.key] = job
        done = load_result(job.folder)
        if done is not None:
            self.results[job.key] = done
            self.display.set(job.key, "done earlier: " + _done_state(done), label, final=True)
            return
        self.display.set(job.key, "training" if self.backend != "local" or len(self._pending) < self.workers
                         else "queued", label)
        if self.backend == "serial":
            self._finished(train_candidate(job))
        elif self.backend == "local":
            if self._pool is None:
                import multiprocessing

                self._env = _one_thread_env()
                self._env.__enter__()
                self._pool = ProcessPoolExecutor(max_workers=self.workers, initializer=_worker_init,
                                                 mp_context=multiprocessing.get_context("spawn"))
            self._pending[self._pool.submit(train_candidate, job)] = job
        else:
            if self._ray is None:
                self._ray = self._start_ray()
            self._pending[self._ray_remote.remote(job)] = job
        self.poll()

    def _start_ray(self) -> Any:
        from hilrl.runtime.distributed.ray_backend import ray_session

        # RAY_ADDRESS (an existing cluster) is joined, else a local Ray is started for the jobs and stopped after
        self._ray_session = ray_session(num_cpus=self.workers, log_to_driver=False)
        ray = self._ray_session.__enter__()
        self._ray_remote = ray.remote(num_cpus=1, max_retries=0)(train_candidate)
        return ray

    def poll(self, timeout: float = 0.0) -> None:
        """Collect what has finished (waiting up to ``timeout`` s for the first), refresh the table."""
        if self._pending:
            if self.backend == "local":
                done, _ = wait(list(self._pending), timeout=timeout, return_when=FIRST_COMPLETED)
                for future in done:
                    self._pending.pop(future)
                    self._finished(future.result())
                for future, job in self._pending.items():
                    if future.running() and self.display.states.get(job.key) == "queued":
                        self.display.states[job.key] = "training"
            else:
                done, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
                for ref in done:
                    self._pending.pop(ref)
                    self._finished(self._ray.get(ref))
        self.display.refresh()

    def wait(self) -> dict[str, dict[str, Any]]:
        """Every submitted job's result, by key."""
        while self._pending:
            self.poll(timeout=1.0)
        return self.results

    def __exit__(self, kind: Any, *exc: Any) -> None:
        try:
            if self._pool is not None:
                if kind is not None:  # interrupted or a candidate crashed: the workers (own sessions) stop too
                    for process in list(getattr(self._pool, "_processes", {}).values()):
                        process.terminate()
                    self._pool.shutdown(wait=False, cancel_futures=True)
                else:
                    self._pool.shutdown()
                self._env.__exit__(None, None, None)
            if self._ray_session is not None:
                self._ray_session.__exit__(None, None, None)
        finally:
            self.display.__exit__(kind, *exc)


def run_jobs(jobs: Sequence[CandidateJob], backend: str = "local", workers: int | None = None,
             show_progress: bool = True, title: str = "candidates",
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train every job not finished yet (a ``result.json`` in its folder is taken as it is); results in job order.

    Args:
        jobs: the candidates.
        backend: ``serial``, ``local`` (process pool) or ``ray``.
        workers: parallel trainings (default: the machine's CPUs).
        show_progress: a table of the candidates.
        title: the table's title.
        on_result: called with each result as it arrives.

    Raises:
        HilrlError: unknown backend, or Ray missing.
    """
    todo = sum(load_result(job.folder) is None for job in jobs)
    with CandidatePool(backend, max(1, min(workers or default_workers(), todo or 1)), show_progress, title,
                       on_result) as pool:
        for job in jobs:
            pool.submit(job)
        results = pool.wait()
    return [results[job.key] for job in jobs]


ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _one_thread_env() -> Any:
    """Spawned workers inherit one BLAS/OpenMP thread each (read when numpy and torch load, before any
    initializer runs), as Ray sets ``OMP_NUM_THREADS`` for its tasks; several threads per worker on a
    machine with as many cores as workers only fight each other."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _worker_init() -> None:
    """One torch thread; and a session of its own, so that with Linux's autogroup scheduling (on by default on
    desktop kernels) each candidate gets the CPU share of a job, as Ray's workers do, instead of all of them
    sharing the one share of the terminal that started the search. Out of the terminal's process group they
    miss its Ctrl-C and a kill of the group, so: the pool terminates them on an interrupt, and on Linux each one
    is killed when the search process dies (``PR_SET_PDEATHSIG``)."""
    import torch

    torch.set_num_threads(1)
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: only the pool's own cleanup
        pass
    if os.getppid() == 1:  # the search died before this worker set that up
        os._exit(1)
