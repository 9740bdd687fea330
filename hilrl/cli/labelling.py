"""People's preference labels: `hilrl label` (the labelling page, the terminal, or an export for TRL)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hilrl.cli.common import out
from hilrl.errors import HilrlError


def label(
    run_dir: Path = typer.Argument(..., help="run folder of a `hilrl train` with reward: {source: preferences}"),
    port: int = typer.Option(8765, help="port of the page"),
    host: str = typer.Option("127.0.0.1", help="address to bind; off loopback needs --token"),
    token: Optional[str] = typer.Option(None, help="secret every request must carry (required off loopback)"),
    terminal: bool = typer.Option(False, "--terminal", help="label in this terminal instead of a browser"),
    who: str = typer.Option("person", help="your labeller id (--terminal; on the page: ?who=NAME)"),
    export_trl: Optional[Path] = typer.Option(None, help="write the labels as TRL preference JSONL and exit"),
) -> None:
    """Label the run's pending preference queries on a local page (videos side by side) while it trains."""
    if export_trl is not None:
        from hilrl.feedback.preferences.store import PreferenceStore

        count = PreferenceStore.for_run(run_dir).export_trl(export_trl)
        out.print(f"wrote {count} preference pairs to {export_trl}")
        return
    from hilrl.config import load_run_env

    env_config = load_run_env(run_dir)  # the run's env, to render the segments' videos (None: no videos)
    if terminal:
        from hilrl.feedback.ui.terminal import label_in_terminal

        made = label_in_terminal(run_dir, env_config, who=who, write=out.print)
        out.print(f"{made} labels saved to {run_dir / 'preferences'}")
        return
    try:
        from hilrl.feedback.ui.app import serve
    except ImportError as exc:
        raise HilrlError(f"the labelling page needs the ui extra ({exc}): pip install 'hilrl[ui]', or use --terminal")
    serve(run_dir, env_config, host=host, port=port, token=token)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command()(label)
