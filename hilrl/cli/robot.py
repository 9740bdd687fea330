"""The robot link and the distributed loop: `hilrl serve-robot`, `hilrl keys`, `hilrl learner`, `hilrl actor`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from hilrl.cli.common import load_experiment, out, set_option


def serve_robot(
    ctx: typer.Context,
    driver: str = typer.Option("sim", help="sim (MuJoCo arm), kinematic, franka or ur"),
    config: Optional[Path] = typer.Option(None, help="robot config YAML (default hardware/configs/<driver>.yaml)"),
    bind: str = typer.Option("tcp://127.0.0.1:5555", help="command channel address"),
) -> None:
    """Run the robot server (hardware/). Further options (--task, --pub-bind, --server-key, --allow-keys,
    --require-auth) pass through. Stops cleanly on Ctrl-C / SIGTERM with the arm holding."""
    import signal
    import subprocess

    # hardware/ is the robot side: it runs in its own process, never imported by hilrl (docs/ARCHITECTURE.md)
    argv = [sys.executable, "-m", "hardware.server", "--driver", driver, "--bind", bind, *ctx.args]
    if config is not None:
        argv += ["--config", str(config)]
    server = subprocess.Popen(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
    raise typer.Exit(server.wait())


def learner(
    config: Path = typer.Argument(..., help="experiment YAML (algo.name: sac)"),
    sets: Optional[list[str]] = set_option(),
    bind: Optional[str] = typer.Option(None, help="transition channel, e.g. tcp://0.0.0.0:5560 (default runtime.bind)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<config name>); resumed"),
    steps: Optional[int] = typer.Option(None, help="shorthand for --set train.steps=N (transitions from all actors)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Train from the transitions actors stream; publish weights; ack what is stored. Resumes its folder."""
    from hilrl.runtime.train import train_learner

    cfg = load_experiment(config, sets, [("--steps", "train.steps", steps)])
    run_dir = out_dir or Path("runs") / config.stem
    result = train_learner(cfg, run_dir, bind=bind, show_progress=not quiet)
    if result is not None:
        out.print(f"success {result.success_rate:.0%}, mean return {result.mean_return:.2f}; run folder {run_dir}")


def actor(
    config: Path = typer.Argument(..., help="the learner's experiment YAML"),
    sets: Optional[list[str]] = set_option(),
    learner_address: str = typer.Option(..., "--learner", help="the learner's address, e.g. tcp://10.0.0.2:5560"),
    out_dir: Path = typer.Option(..., "--out", help="this actor's folder (spool, last weights); resumed"),
    actor_id: str = typer.Option("actor0", "--id", help="unique name among the learner's actors"),
    index: int = typer.Option(0, min=0, help="seeds this actor's episodes apart from the others'"),
    steps: Optional[int] = typer.Option(None, min=1, help="stop after this many env steps (default: until done)"),
    quiet: bool = typer.Option(False, help="no summary line"),
) -> None:
    """Act in the env and stream transitions to the learner; keeps acting if it stalls, re-sends after restarts."""
    from hilrl.runtime.distributed.actor import run_actor

    counters = run_actor(load_experiment(config, sets), out_dir, learner_address, actor_id=actor_id, index=index,
                         steps=steps)
    if not quiet:
        out.print(f"actor {actor_id}: {counters['steps']} steps, {counters['episodes']} episodes, "
                  f"acked up to {counters['acked']}, {counters['unacked']} waiting")


keys_app = typer.Typer(help="CurveZMQ keys for the robot link.", no_args_is_help=True)


@keys_app.command("generate")
def keys_generate(
    directory: Path = typer.Option(Path("keys"), "--dir", help="folder for NAME.key and NAME.key_secret"),
    name: str = typer.Option(..., help="key name, e.g. robot or workstation"),
    overwrite: bool = typer.Option(False, help="replace existing key files"),
) -> None:
    """Generate a CurveZMQ key pair; give the public NAME.key to the other side's allow-list."""
    from hilrl.envs.auth import generate_keypair

    public, secret = generate_keypair(directory, name, overwrite=overwrite)
    out.print(f"public key: {public}\nsecret key: {secret} (keep it private)")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command(name="serve-robot", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        serve_robot)
    app.command()(learner)
    app.command()(actor)
    app.add_typer(keys_app, name="keys")
