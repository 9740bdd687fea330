"""`hilrl sweep`: a grid of seeds × settings of one experiment, one run folder each, and a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from hilrl.cli.common import out


def sweep(
    ctx: typer.Context,
    config: Path = typer.Argument(..., help="experiment YAML in sim_configs/"),
    seeds: list[str] = typer.Option(..., "--seeds", metavar="S ...", help="train.seed of each run: --seeds 0 1 2 "
                                    "(or 0,1,2)"),
    sets: Optional[list[str]] = typer.Option(None, "--set", metavar="KEY=V1,V2", help="a setting to vary: every "
                                             "combination of the --set values is trained for every seed; values "
                                             "read as YAML, as hilrl train --set; repeatable"),
    out_dir: Path = typer.Option(..., "--out", help="the sweep's folder: run OUT/<setting>/seed_S, OUT/summary.md"),
    backend: str = typer.Option("local", help="local (a process pool here) or ray (one Ray task per run)"),
    workers: int = typer.Option(2, help="runs at once on the local pool (and the CPUs of a local Ray)"),
    address: Optional[str] = typer.Option(None, help="--backend ray: the cluster (ray start --head prints it); "
                                                     "default RAY_ADDRESS, else a local Ray for the sweep"),
) -> None:
    """Train CONFIG for every seed × setting; finished runs are skipped, started ones continue (run it again to
    finish an interrupted sweep). Prints and writes the mean ± std per setting (OUT/summary.md, summary.json)."""
    from hilrl.errors import HilrlError
    from hilrl.runtime.sweep import run_sweep

    texts = [*seeds, *ctx.args]  # --seeds 0 1 2: click hands the values after the first over as extra arguments
    try:
        seed_values = [int(text) for part in texts for text in part.split(",") if text.strip()]
    except ValueError:
        raise HilrlError(f"--seeds {' '.join(texts)}: seeds are integers, e.g. --seeds 0 1 2") from None

    def report(record: dict) -> None:
        what = record["status"] if record["status"] != "failed" else f"failed: {record['error']}"
        out.print(f"{record['setting']} seed {record['seed']}: {what}", markup=False, highlight=False)

    result = run_sweep(config, seed_values, sets or [], out_dir, backend=backend, workers=workers, address=address,
                       on_run=report)
    table = Table(title=f"sweep of {config.name} ({backend}, {result.wall_seconds:.0f} s)")
    for column in ("setting", "seeds", "success rate", "mean return"):
        table.add_column(column)
    for row in result.rows:
        if row["success_rate"] is None:
            table.add_row(escape(row["setting"]), f"0 ({row['failed']} failed)", "-", "-")
            continue
        failed = f" ({row['failed']} failed)" if row["failed"] else ""
        table.add_row(escape(row["setting"]), f"{row['seeds']}{failed}",
                      f"{row['success_rate']:.0%} ± {row['success_rate_std']:.0%}",
                      f"{row['mean_return']:.2f} ± {row['mean_return_std']:.2f}")
    out.print(table)
    out.print(f"summary: {out_dir / 'summary.md'}", markup=False, highlight=False)
    if result.failed:
        raise HilrlError(f"{len(result.failed)} of {len(result.runs)} runs failed (errors in "
                         f"{out_dir / 'summary.json'}); run the same command again to retry them")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command(context_settings={"allow_extra_args": True})(sweep)
