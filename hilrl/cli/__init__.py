"""The `hilrl` command (typer). Thin: parse arguments, load the config, call one library function.

One module per command group; each adds its commands with ``register(app)``:

- :mod:`hilrl.cli.experiments`: ``envs``, ``train``, ``eval``
- :mod:`hilrl.cli.demos`: ``record``, ``replay``
- :mod:`hilrl.cli.robot`: ``serve-robot``, ``learner``, ``actor``, ``keys``
- :mod:`hilrl.cli.labelling`: ``label``
- :mod:`hilrl.cli.language`: ``reward-search``, ``correct``, ``kb``
- :mod:`hilrl.cli.alignment`: ``align``
- :mod:`hilrl.cli.sweep`: ``sweep``
- :mod:`hilrl.cli.common`: the consoles, the error handler, ``--set`` and loading an experiment with it

Library code is imported inside the commands, so ``hilrl envs`` never loads torch and a command whose
library moved breaks alone.
"""

from __future__ import annotations

import typer

from hilrl.cli import alignment, demos, experiments, labelling, language, robot, sweep
from hilrl.cli.common import run_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Teach robot arms with people in the loop.")
for group in (experiments, demos, robot, labelling, language, alignment, sweep):
    group.register(app)


def main() -> None:
    """Entry point (``[project.scripts] hilrl``): a user-facing error is one red line and exit code 2."""
    run_app(app)


__all__ = ["app", "main"]
