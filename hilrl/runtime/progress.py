"""The progress display every long command shows: a live bar in a terminal, plain lines in a log.

Rich lays a progress row out as one table line of the console's width and cuts the
cells that do not fit (``━━━━ 300… 0:… 0:0…``), and it redraws a live display only on a
terminal: a pipe or a CI log gets the final state alone, at a fallback width of 80
columns (Textualize/rich: ``rich/live.py`` ``Live.refresh``, ``rich/console.py`` ``Console.size``). So here:

* in a terminal wide enough, the usual row, the bar shrunk to the room left by the figures;
* in a narrower one, each task's figures as text that wraps between words;
* in a pipe, a file or a dumb terminal, the same text as plain lines: one when a task
  starts, then at most one every ``LOG_EVERY_S`` seconds, and its last state when it
  finishes (or when the display stops).

Callers use :func:`make_progress` and rich's ``Progress.add_task`` / ``Progress.update``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)

LOG_EVERY_S = 5.0  # plain-line output: seconds between two lines of one task
BAR_WIDTH = 40  # rich's default
MIN_BAR_WIDTH = 10  # narrower than this, the bar is dropped and the figures shown as text


def _clock(seconds: float | None) -> str:
    return str(timedelta(seconds=int(seconds or 0)))  # 0:01:05, as rich's time columns


def progress_line(task: Task) -> str:
    """A task's figures as plain text: what runs, steps done/total, time elapsed and left, its stats."""
    done = f"{int(task.completed)}/{int(task.total)}" if task.total is not None else f"{int(task.completed)}"
    elapsed = task.finished_time if task.finished else task.elapsed  # as rich's TimeElapsedColumn
    parts = [task.description, done, f"{_clock(elapsed)} elapsed"]
    if not task.finished and task.time_remaining is not None:
        parts.append(f"{_clock(task.time_remaining)} left")
    stats = str(task.fields.get("stats", ""))
    return "  ".join(parts + ([stats] if stats else []))


def _columns() -> tuple:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=BAR_WIDTH),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
    )


class _TerminalProgress(Progress):
    """Rich's live display whose figures are never cut: the bar gives way first, then the row layout."""

    def get_renderables(self) -> Iterable[RenderableType]:
        if not hasattr(self, "live"):  # Progress.__init__ renders once before it sets self.live (no tasks yet)
            return
        bar = next(column for column in self.columns if isinstance(column, BarColumn))
        bar.bar_width = MIN_BAR_WIDTH
        table = self.make_tasks_table(self.tasks)
        unbounded = self.console.options.update_width(10_000)
        room = self.console.width - self.console.measure(table, options=unbounded).maximum
        if room >= 0:
            bar.bar_width = min(BAR_WIDTH, MIN_BAR_WIDTH + room)
            yield self.make_tasks_table(self.tasks)
        else:
            yield Group(*(Text(progress_line(task), overflow="fold") for task in self.tasks if task.visible))


class _LogProgress(Progress):
    """No live display (rich would print only the final state): plain lines at a log's pace instead."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs, disable=True)  # tracks tasks, draws nothing itself
        self._printed: dict[TaskID, tuple[float, str, bool]] = {}  # per task: when, the line, whether finished
        self._unprinted: set[TaskID] = set()

    def _log(self, task_id: TaskID, now: bool = False) -> None:
        with self._lock:
            task = self._tasks[task_id]
            line = progress_line(task)
            last_time, last_line, was_finished = self._printed.get(task_id, (float("-inf"), "", False))
            if line == last_line:
                self._unprinted.discard(task_id)
            elif now or (task.finished and not was_finished) or self.get_time() - last_time >= LOG_EVERY_S:
                self.console.print(Text(line), soft_wrap=True)  # a log line is never broken
                self._printed[task_id] = (self.get_time(), line, task.finished)
                self._unprinted.discard(task_id)
            else:
                self._unprinted.add(task_id)

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(*args, **kwargs)
        self._log(task_id, now=True)
        return task_id

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def stop(self) -> None:  # the last state of every task, also one that ended short of its total
        with self._lock:
            for task_id in sorted(self._unprinted):
                self._log(task_id, now=True)


def make_progress(disable: bool = False) -> Progress:
    """The progress display for :data:`console`: nothing when ``disable``, a live bar on a terminal
    (or in Jupyter), plain lines in a pipe, a file or a dumb terminal."""
    if disable:
        return Progress(*_columns(), console=console, disable=True)
    live = console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)  # rich.live.Live's test
    return (_TerminalProgress if live else _LogProgress)(*_columns(), console=console, transient=False)
