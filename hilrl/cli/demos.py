"""Demonstrations: `hilrl record` (an expert or a person on a teleop device) and `hilrl replay` (exactness)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from hilrl.cli.common import load_experiment, out, set_option
from hilrl.errors import HilrlError


def record(
    config: Path = typer.Argument(..., help="experiment YAML (its env section is used)"),
    sets: Optional[list[str]] = set_option(),
    device: str = typer.Option("expert", help="who acts: expert (scripted), or a person with keyboard, gamepad "
                                              "or spacemouse (needs hilrl[teleop]; controls: README, Teleoperation)"),
    episodes: int = typer.Option(10, min=1),
    out_file: Path = typer.Option(..., "--out", help="robomimic-layout .hdf5 to write"),
    noise: float = typer.Option(0.0, min=0.0, max=1.0, help="scripted expert's noise knob"),
    seed: int = typer.Option(0),
    append: bool = typer.Option(False, help="add to an existing file instead of replacing it"),
    expert: Optional[str] = typer.Option(None, help="--device expert: your scripted policy 'module:callable', a "
                                                    "factory f(env, noise, seed) -> expert (sets env.expert)"),
) -> None:
    """Record demonstrations; each episode is flushed to disk as soon as it ends."""
    from hilrl.runtime.record import record_demos

    cfg = load_experiment(config, sets, [("--expert", "env.expert", expert)])
    stats = record_demos(cfg.env, out_file, episodes, device=device, noise=noise, seed=seed, append=append)
    out.print(f"recorded {stats.episodes} episodes to {out_file}: success {stats.success_rate:.0%}, "
              f"mean return {stats.mean_return:.2f}, mean length {sum(stats.lengths) / stats.episodes:.1f} steps "
              f"({sum(stats.lengths)} steps in all)", markup=False, highlight=False)


def replay(
    file: Path = typer.Argument(..., help="robomimic-layout .hdf5"),
    mode: str = typer.Option("states", help="states (exact, set each recorded state) or actions (open loop)"),
    video: Optional[Path] = typer.Option(None, help="write the replay to this mp4: each demo from its first state to "
                                                    "its last, captioned, its last frame held a second"),
    atol: Optional[float] = typer.Option(None, help="divergence tolerance (default 1e-5 states, 1e-3 actions)"),
) -> None:
    """Replay every demo; exits 1 when a state replay diverges."""
    import gymnasium as gym

    import hilrl.envs  # noqa: F401
    from hilrl.data.hdf5 import DemoFile
    from hilrl.data.replay import CaptionedFrames, replay_actions, replay_states
    from hilrl.data.video import VideoWriter

    if mode not in ("states", "actions"):
        raise HilrlError(f"--mode {mode!r}: allowed values are states, actions")
    replay_fn = replay_states if mode == "states" else replay_actions
    tolerance = atol if atol is not None else (1e-5 if mode == "states" else 1e-3)
    with DemoFile(file) as demos:
        env_args = demos.env_args
        if "env_name" not in env_args:
            raise HilrlError(f"{file}: data.attrs['env_args'] names no env; cannot replay it")
        if "hilrl_env" in env_args:  # a foreign env: rebuilt from its env section, through its adapter
            from hilrl.config import EnvConfig
            from hilrl.envs.make import make_env

            env = make_env(EnvConfig.model_validate(env_args["hilrl_env"]),
                           **({"render_mode": "rgb_array"} if video else {}))
        else:
            kwargs = dict(env_args.get("env_kwargs", {}))
            if "cameras" in kwargs:
                kwargs["cameras"] = tuple(kwargs["cameras"])
            env = gym.make(env_args["env_name"], **kwargs)
        if mode == "states" and not callable(getattr(env.unwrapped, "set_state", None)):
            out.print(f"{env_args['env_name']} has no simulator state to restore (not a MuJoCo env): replaying the "
                      "actions of each demo from its seeded reset instead", markup=False, highlight=False)
            mode, replay_fn = "actions", replay_actions
            tolerance = atol if atol is not None else 1e-3
        fps = env.unwrapped.metadata.get("render_fps", 10)
        writer = VideoWriter(video, fps=fps) if video else None
        frames = CaptionedFrames(writer, fps) if writer is not None else None
        table = Table(title=f"{mode} replay of {file}")
        for column in ("demo", "steps", "max obs error", "worst key", "result"):
            table.add_column(column)
        diverged = 0
        total = len(demos)
        try:
            for index, name in enumerate(demos.demo_names):
                episode = demos.episode(name)
                if frames is not None:
                    frames.start(episode, index, total)
                result = replay_fn(episode, env, atol=tolerance, on_frame=frames)
                if frames is not None:
                    frames.end()
                diverged += result.diverged
                table.add_row(name, str(result.steps), f"{result.max_obs_error:.3g}", result.worst_key or "-",
                              "[red]diverged[/red]" if result.diverged else "[green]ok[/green]")
        finally:
            env.close()
            if writer is not None:
                writer.close()
    out.print(table)
    out.print(f"{diverged} of {total} demos diverged beyond {tolerance:g}")
    if video is not None:
        out.print(f"video: {video}")
    if diverged and mode == "states":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command()(record)
    app.command()(replay)
