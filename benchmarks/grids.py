"""What the benchmark scripts that run a grid of runs share: their grid options and how a grid's end is reported.

The grid itself runs on :func:`hilrl.runtime.sweep.run_grid` (``hilrl sweep``'s runner)."""

from __future__ import annotations

import argparse
from typing import Any

from hilrl.runtime.sweep import BACKENDS, grid_report


def add_grid_options(parser: argparse.ArgumentParser, workers: int, what: str = "runs") -> None:
    """``--workers``, ``--backend local|ray`` and ``--address``, as run_grid takes them."""
    parser.add_argument("--workers", type=int, default=workers, help=f"{what} at once (local pool; a local Ray's CPUs)")
    parser.add_argument("--backend", choices=BACKENDS, default="local", help="local process pool or Ray tasks")
    parser.add_argument("--address", default=None, help="--backend ray: the cluster (default RAY_ADDRESS, else a "
                        "local Ray)")


def end_grid(records: list[dict[str, Any]]) -> None:
    """Print the skipped and failed runs (:func:`grid_report`); exit with status 1 when any failed."""
    report = grid_report(records)
    if report:
        print("\n" + report)
    if any(record["status"] == "failed" for record in records):
        raise SystemExit(1)
