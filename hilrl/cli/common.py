"""What every command group of `hilrl` shares: the consoles, the one error handler, and loading an
experiment YAML with the command's overrides (``--set KEY=VALUE`` and flag shorthands)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from hilrl.errors import HilrlError

out = Console(soft_wrap=True)
err = Console(stderr=True)

SET_HELP = ("change one value of the config: a dotted KEY=VALUE, the value read as YAML (numbers, true/false, "
            "lists, null), validated with the file; repeatable, e.g. --set algo.utd=4 --set train.eval_episodes=10")


def set_option() -> Any:
    """The ``--set KEY=VALUE`` option (repeatable) of every command that loads an experiment YAML."""
    return typer.Option(None, "--set", metavar="KEY=VALUE", help=SET_HELP)


def load_experiment(config: Path, sets: Optional[Sequence[str]] = None,
                    flags: Sequence[tuple[str, str, Any]] = ()) -> Any:
    """The experiment YAML with the command's changes, validated together (:func:`hilrl.config.load_config`).

    :param config: the experiment YAML
    :param sets: the ``--set`` texts, in the order given (``KEY=VALUE``)
    :param flags: a command's shorthands as ``(flag, dotted key, value)``, e.g. ``("--steps", "train.steps", 500)``;
        a value of ``None`` was not given. An error about its value names the flag (``--steps -5: ...``).
    """
    from hilrl.config import Override, load_config, parse_override

    overrides = [parse_override(text) for text in sets or ()]
    overrides += [Override(key, value, f"{flag} {value}") for flag, key, value in flags if value is not None]
    return load_config(config, overrides)


def run_app(app: typer.Typer) -> None:
    """Run the command: a user-facing error (:class:`HilrlError`) is one red line and exit code 2, never a
    traceback wall; Ctrl-C exits 130."""
    try:
        app()
    except HilrlError as exc:
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
