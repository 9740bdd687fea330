"""Shared set-up of the preference tests and benchmark: a real run folder with pending queries."""

from __future__ import annotations

from pathlib import Path

import yaml


def human_config(steps: int = 260, queries: int = 6, seed: int = 0, **reward_kwargs) -> dict:
    """Reach, SAC not yet updating (fast), preference reward without a teacher: queries wait for a person.
    ``reward_kwargs`` add to (or replace) the preference source's settings."""
    return {
        "env": {"id": "hilrl/Reach-v0"},
        "demos": {"episodes": 0},
        "algo": {"name": "sac", "obs_keys": ["ee_pos", "object"], "hidden": [32, 32]},
        "reward": {"source": "preferences", "kwargs": {
            "segment_length": 10, "first_query_at": 200, "query_every": 1000, "queries_per_session": queries,
            "max_queries": queries, "epochs": 5, "obs_keys": ["ee_pos", "object"], "label_check_every": 20,
            "selection": "uniform", **reward_kwargs}},
        "train": {"steps": steps, "seed": seed, "learning_starts": 100_000, "random_steps": 100_000,
                  "eval_episodes": 1, "checkpoint_every": 100_000, "video": False},
    }


def pending_run(run: Path, queries: int = 6, seed: int = 0, **reward_kwargs) -> Path:
    """``hilrl train`` a config whose reward model waits for a person, into ``run``; returns ``run``."""
    from typer.testing import CliRunner

    from hilrl.cli import app

    run = Path(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    config = run.parent / f"{run.name}.yaml"
    config.write_text(yaml.safe_dump(human_config(queries=queries, seed=seed, **reward_kwargs)))
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(run)])
    if result.exit_code != 0:
        raise RuntimeError(f"training the pending run failed: {result.output}\n{result.exception!r}")
    return run
