"""The run folder every strategy writes, and the one place that reads run folders.

::

    OUT/config.yaml            the resolved config (every default filled in); a folder holding a started run
                               of another config is refused (:func:`check_same_run`)
    OUT/demos.hdf5             demos recorded for this run (when the config names no file)
    OUT/bc_rollouts.hdf5       with demos.bc_rollouts: the BC policy's episodes the online strategy recorded
    OUT/tb/                    TensorBoard scalars
    OUT/checkpoints/step_N.pt  {"algo": name, "experiment": config, "state": algorithm state, "counters": ...,
                               "replay": {"online": file, "demo": file}, loop state...}; written to a temp
                               file and renamed, after the replay files it names
    OUT/checkpoints/replay_{online,demo}_N.npz   the buffers at step N (only the newest are kept)
    OUT/checkpoints/best.pt    with train.keep_best: the best evaluated policy
    OUT/metrics.json           final evaluation, counters and facts of the run
    OUT/final_policy.mp4       the final policy's first test episodes (train.video)

The same layout whichever strategy wrote it (online, distributed learner, DAgger, offline, SB3). One rule
says which checkpoint is a run's newest, for resuming and for loading its policy alike
(:func:`latest_checkpoint`): the newest *complete* one, every file it names there. A run's policy is
``best.pt`` where the run kept its best, else that checkpoint (:func:`policy_checkpoint`);
:func:`load_policy` rebuilds it and :func:`evaluate_run` (``hilrl eval``) evaluates it.

Resuming (the online strategies, local and distributed): ``train.steps`` (``hilrl train --steps N``) is the
run's total of env steps, never a number more: a run at 800 env steps continued with ``--steps 900`` trains
100 more, and run again with the same command it has nothing to do. LeRobot's ``--steps`` with ``--resume``
and CleanRL's ``total_timesteps`` count the same way, and a config file then names the run's length whether or
not it was stopped on the way (SB3's ``learn(n, reset_num_timesteps=False)`` differs: it trains ``n`` more).
:func:`finished_steps` says when a folder holds a finished run the config would not add to, so that
``hilrl train`` says so and stops instead of evaluating it again (``hilrl eval`` does that).

Writing and evaluating are apart: a strategy evaluates its final policy
(:func:`hilrl.runtime.evaluate.final_evaluation`) and hands the result to :meth:`RunFolder.finish`,
the one end of every strategy (scalars, ``metrics.json``). This module imports
:mod:`hilrl.runtime.evaluate`, never the other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hilrl.config import ExperimentConfig, dump_config, load_recorded_config
from hilrl.errors import HilrlError
from hilrl.runtime.seeds import TEST_SEED

if TYPE_CHECKING:
    from hilrl.runtime.evaluate import EvalResult

BEST_CHECKPOINT = "best.pt"
BC_ROLLOUTS = "bc_rollouts.hdf5"
FINAL_VIDEO = "final_policy.mp4"
OLDER_HILRL = ("was written by an older hilrl; train afresh in a new --out folder, or resume it with the hilrl "
               "version that wrote it")


def save_checkpoint(path: str | os.PathLike, algo: Any, experiment: dict[str, Any], **extra: Any) -> Path:
    """Write ``algo``'s state with the experiment config that rebuilds it; temp file + rename, never half-written."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"algo": experiment["algo"]["name"], "experiment": experiment, "state": algo.state_dict(), **extra},
               tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise HilrlError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise HilrlError(f"{path}: not a readable hilrl checkpoint ({exc.__class__.__name__}: {exc})") from None


def step_checkpoints(run: str | os.PathLike) -> list[Path]:
    """``RUN/checkpoints/step_N.pt``, oldest first."""
    return sorted((Path(run) / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(run: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete ``RUN/checkpoints/step_N.pt`` (every replay file it names is there), loaded; ``None``
    when the run has none.

    The one rule for "the run's newest checkpoint": a run resumes from it and its policy is read from it
    (:func:`policy_checkpoint`), so ``hilrl eval`` never evaluates a step the run would not continue from.
    """
    folder = Path(run) / "checkpoints"
    for path in reversed(step_checkpoints(run)):
        state = load_checkpoint(path)
        names = state.get("replay")
        if names is None or all((folder / name).is_file() for name in names.values()):
            return path, state
    return None


def policy_checkpoint(run_or_checkpoint: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The checkpoint that is a run's policy, loaded: ``checkpoints/best.pt`` if the run kept its best
    (``train.keep_best``), else :func:`latest_checkpoint`; a checkpoint file is itself."""
    path = Path(run_or_checkpoint)
    if path.is_file():
        return path, load_checkpoint(path)
    if not path.exists():
        raise HilrlError(f"{path}: no such run folder or checkpoint")
    best = path / "checkpoints" / BEST_CHECKPOINT
    if best.is_file():
        return best, load_checkpoint(best)
    found = latest_checkpoint(path)
    if found is not None:
        return found
    steps = step_checkpoints(path)
    if steps:
        raise HilrlError(f"{path}: no complete checkpoint (the replay files {steps[-1].name} names are gone); "
                         f"pass a checkpoint file itself, e.g. {steps[-1]}")
    raise HilrlError(f"{path}: no checkpoints in {path / 'checkpoints'}; was the run trained with `hilrl train`?")


def load_policy(run_or_checkpoint: str | os.PathLike) -> tuple[ExperimentConfig, Any, Path]:
    """Rebuild the experiment config and the trained algorithm of a run folder (:func:`policy_checkpoint`) or
    a checkpoint file; returns ``(config, algorithm, checkpoint path)``."""
    from hilrl.envs.make import make_env
    from hilrl.policies.registry import make_algorithm

    path, state = policy_checkpoint(run_or_checkpoint)
    config = ExperimentConfig.model_validate(state["experiment"])
    env = make_env(config.env)
    try:
        algo = make_algorithm(config.algo, env.observation_space, env.action_space, seed=config.train.seed)
    finally:
        env.close()
    algo.load_state_dict(state["state"])
    return config, algo, path


def evaluate_run(run_or_checkpoint: str | os.PathLike, episodes: int = 50, seed: int = TEST_SEED,
                 video: str | os.PathLike | None = None, video_episodes: int = 5,
                 show_progress: bool = True) -> EvalResult:
    """``hilrl eval``: the run's policy (:func:`load_policy`) evaluated deterministically on ``episodes`` test
    episodes from ``seed``; an :class:`~hilrl.runtime.evaluate.EvalResult` labelled with its checkpoint."""
    import torch

    from hilrl.runtime.evaluate import evaluate_policy

    torch.set_num_threads(1)
    config, algo, path = load_policy(run_or_checkpoint)
    result = evaluate_policy(config.env, lambda obs: algo.act(obs, deterministic=True), episodes,
                             seed=seed, video=video, video_episodes=video_episodes,
                             show_progress=show_progress)
    result.checkpoint = str(path)
    return result


def _changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumped configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_settings(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_same_run(config: ExperimentConfig, out: Path) -> None:
    """Refuse a folder that holds another experiment's run; only ``train.steps`` may change (``--steps N``:
    the run's new total, module docstring).

    Why: a folder with checkpoints (or a learner's log) is resumed, and its ``config.yaml`` is
    the record of what was run; a different config would mix two experiments in one run and
    overwrite that record.
    """
    saved = out / "config.yaml"
    started = bool(step_checkpoints(out)) or (out / "log").is_dir()
    if not saved.is_file() or not started:
        return
    old = load_recorded_config(saved).model_dump(mode="json")
    new = config.model_dump(mode="json")
    old["train"]["steps"] = new["train"]["steps"]
    changed = _changed_settings(old, new)
    if changed:
        raise HilrlError(f"{out} holds a run of another config ({'; '.join(changed)}); it would be resumed under "
                         f"the new settings and its config.yaml overwritten. Pass a new --out folder, or put those "
                         f"settings back to continue that run.")


def finished_steps(config: ExperimentConfig, out: str | os.PathLike) -> int | None:
    """The env steps of the finished run in ``out`` when ``config`` has nothing to add to it, else ``None``.

    Finished: the newest complete checkpoint (:func:`latest_checkpoint`) counts at least ``train.steps`` env
    steps and ``metrics.json`` holds the final evaluation at those steps; only the strategies that resume
    (``loop="online"``, local or distributed) count, the others train afresh. A folder of another config is
    refused first (:func:`check_same_run`), so a changed setting is named rather than passed over. ``None``
    means that training has something to do: steps to add, a final evaluation a stopped run never wrote, or a
    fresh run.
    """
    from hilrl.policies.registry import algorithm_spec

    out = Path(out)
    metrics = out / "metrics.json"
    if algorithm_spec(config.algo.name).loop != "online" or not metrics.is_file():
        return None
    check_same_run(config, out)
    try:
        evaluated = json.loads(metrics.read_text()).get("env_steps")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: the run finishes again and rewrites it
    if not isinstance(evaluated, int) or evaluated < config.train.steps:
        return None  # steps to add: the checkpoint is loaded once, by the resume, not here as well
    found = latest_checkpoint(out)
    done = None if found is None else found[1].get("counters", {}).get("env_steps")
    return evaluated if done == evaluated else None


class RunFolder:
    """A run's folder (module docstring): config record, demos, scalars, checkpoints, resume and metrics.

    Args:
        config: the experiment.
        out: the folder; created. A folder holding another config's started run is refused.
        record: check the folder and write ``config.yaml`` (``False``: a library user who built the folder).
    """

    def __init__(self, config: ExperimentConfig, out: str | os.PathLike, record: bool = True) -> None:
        self.config, self.out = config, Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.experiment = config.model_dump(mode="json")
        if record:
            check_same_run(config, self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if record:
            dump_config(config, self.out / "config.yaml")
        self._writer: Any = None

    # ---------------------------------------------------------------- demos

    def demo_episodes(self, show_progress: bool = True) -> list:
        """The config's demos: ``demos.path``, else ``OUT/demos.hdf5`` (recorded now by the scripted expert
        unless an earlier session of this run recorded it), cut after success with ``demos.keep_after_success``.
        A file made with other env settings (or, for
        the run's own file, another count or noise) is refused, naming the differences."""
        from hilrl.data.hdf5 import DemoFile
        from hilrl.runtime.record import record_demos
        from hilrl.runtime.seeds import Seeds

        demos = self.config.demos
        if not (demos.path or demos.episodes):
            return []
        path = Path(demos.path) if demos.path else self.out / "demos.hdf5"
        if not demos.path and not path.exists():
            seeds = Seeds(self.config.train.seed)
            record_demos(self.config.env, path, demos.episodes, noise=demos.noise, seed=seeds.demo(0),
                         show_progress=show_progress)
        with DemoFile(path) as file:
            episodes = [file.episode(name) for name in file.demo_names]
            problems = self._demo_mismatches(file.env_args, episodes, own=not demos.path)
        if problems:
            fix = ("point demos.path at a file recorded with these settings (hilrl record CONFIG --out FILE)"
                   if demos.path else f"delete {path} to record the config's demos, or pass a new --out folder")
            raise HilrlError(f"{path} holds demos that do not match the config: {'; '.join(problems)}; {fix}")
        return self._cut(episodes)

    def record_bc_rollouts(self, episodes: Iterable) -> None:
        """Write ``episodes`` (as they come: each is flushed when it arrives) to ``OUT/bc_rollouts.hdf5``, the
        file :meth:`bc_rollouts` reads. Who fits and rolls out the BC policy is the online strategy's business
        (:func:`hilrl.runtime.strategies.online.roll_out_bc`)."""
        from hilrl.data.hdf5 import DemoWriter

        env_kwargs = self.config.env.file_kwargs()
        with DemoWriter(self.out / BC_ROLLOUTS, self.config.env.id, env_kwargs) as writer:
            for episode in episodes:
                writer.add(episode)

    def bc_rollouts(self) -> list | None:
        """The ``demos.bc_rollouts`` episodes this run recorded (:meth:`record_bc_rollouts`), cut after success
        like the demos; ``None`` when it has not recorded them yet. A file of another count is refused."""
        from hilrl.data.hdf5 import DemoFile

        path, wanted = self.out / BC_ROLLOUTS, self.config.demos.bc_rollouts
        if not path.exists():
            return None
        with DemoFile(path) as file:
            episodes = [file.episode(name) for name in file.demo_names]
        if len(episodes) != wanted:
            raise HilrlError(f"{path} holds {len(episodes)} BC rollouts, the config asks for {wanted}; "
                             "delete the file to record them again, or pass a new --out folder")
        return self._cut(episodes)

    def _cut(self, episodes: list) -> list:
        keep = self.config.demos.keep_after_success
        return episodes if keep is None else [episode.cut_after_success(keep) for episode in episodes]

    def _demo_mismatches(self, stored: dict[str, Any], episodes: list, own: bool) -> list[str]:
        """What differs between the config and a demo file (its ``env_args`` and episodes)."""
        env, demos = self.config.env, self.config.demos
        problems = []
        if stored.get("env_name") != env.id:
            problems.append(f"env.id: file {stored.get('env_name')!r}, config {env.id!r}")
        kwargs = env.file_kwargs()
        recorded = stored.get("env_kwargs", {})
        for key, value in kwargs.items():
            if key in recorded and recorded[key] != value:
                problems.append(f"env.{key}: file {recorded[key]!r}, config {value!r}")
        count = len(episodes)
        if own and count != demos.episodes:
            problems.append(f"demos.episodes: file {count}, config {demos.episodes}")
        elif not own and "episodes" in demos.model_fields_set and count != demos.episodes:
            problems.append(f"demos.episodes: file {count}, config {demos.episodes} (remove demos.episodes to use "
                            "every episode of the file)")
        noise = episodes[0].attrs.get("noise") if own and episodes else None
        if noise is not None and abs(float(noise) - demos.noise) > 1e-12:
            problems.append(f"demos.noise: file {noise!r}, config {demos.noise!r}")
        return problems

    # ---------------------------------------------------------------- scalars

    @property
    def writer(self) -> Any:
        """TensorBoard's ``SummaryWriter`` on ``OUT/tb`` (opened on first use)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}{key}", float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, step: int, algo: Any, counters: dict[str, Any], replay: Any = None,
                   **loop_state: Any) -> Path:
        """Write ``checkpoints/step_{step}.pt`` (and the replay buffers first, which it names); older replay
        files go (older ``step_*.pt`` keep their networks: any can be evaluated, the newest resumes)."""
        names = replay.save(self.ckpt_dir, step) if replay is not None else None
        path = save_checkpoint(self.ckpt_dir / f"step_{step}.pt", algo, self.experiment, counters=dict(counters),
                               replay=names, **loop_state)
        if names is not None:
            for old in self.ckpt_dir.glob("replay_*.npz"):
                if old.name not in names.values():
                    old.unlink(missing_ok=True)
        return path

    def resume(self, algo: Any, replay: Any = None, loop_state: tuple[str, ...] = ()) -> dict[str, Any] | None:
        """Load the newest complete checkpoint (:func:`latest_checkpoint`) into ``algo`` (and ``replay``); returns
        it with its ``path``, or ``None`` (a fresh run). ``loop_state``: the keys the strategy reads back from it;
        a checkpoint without them (an older hilrl's) is refused, as is one that names no buffers to resume."""
        found = latest_checkpoint(self.out)
        if found is None:
            return None
        path, state = found
        missing = [key for key in ("counters", *loop_state) if key not in state]
        if missing:
            raise HilrlError(f"{path} {OLDER_HILRL} (it holds no {', '.join(missing)})")
        if replay is not None and state.get("replay") is None:
            raise HilrlError(f"{path} names no replay buffers to resume from (an offline or SB3 run's, or an "
                             "older hilrl's); pass a new --out folder")
        algo.load_state_dict(state["state"])
        if replay is not None:
            replay.load(self.ckpt_dir, state["replay"])
        state["path"] = path
        return state

    @property
    def best_path(self) -> Path:
        return self.ckpt_dir / BEST_CHECKPOINT

    def best(self) -> dict[str, Any] | None:
        """The ``best`` record of ``checkpoints/best.pt`` (step, success rate, mean return), if there is one."""
        return load_checkpoint(self.best_path)["best"] if self.best_path.is_file() else None

    def save_best(self, algo: Any, counters: dict[str, Any], best: dict[str, Any]) -> None:
        save_checkpoint(self.best_path, algo, self.experiment, counters=dict(counters), best=best)

    def load_best(self, algo: Any) -> Path:
        """Load ``checkpoints/best.pt``'s networks into ``algo``; returns its path."""
        algo.load_state_dict(load_checkpoint(self.best_path)["state"])
        return self.best_path

    # ---------------------------------------------------------------- the end

    @property
    def final_video(self) -> Path | None:
        """Where the final evaluation's video goes: ``OUT/final_policy.mp4`` with ``train.video``, else ``None``."""
        return self.out / FINAL_VIDEO if self.config.train.video else None

    def finish(self, result: EvalResult | None, counters: dict[str, Any] | None, step: int,
               **facts: Any) -> EvalResult | None:
        """The end of every strategy: the final evaluation ``result`` it made
        (:func:`hilrl.runtime.evaluate.final_evaluation`; ``None`` where it evaluated none) as scalars at
        ``step`` (``eval/``, or ``eval/best_policy_`` for ``best.pt``'s), then ``OUT/metrics.json`` (temp file +
        rename): the result, the algorithm and env, ``facts`` and ``counters``. Returns ``result``.

        The training loop's episode counter is written as ``train_episodes`` so that ``episodes`` always
        means the evaluation's episode count.
        """
        if result is not None:
            prefix = "eval/best_policy_" if Path(result.checkpoint).name == BEST_CHECKPOINT else "eval/"
            self.scalars(step, {"success_rate": result.success_rate, "mean_return": result.mean_return}, prefix)
        self.close()
        counters = dict(counters or {})
        if "episodes" in counters:
            counters["train_episodes"] = counters.pop("episodes")
        summary = {**(result.to_dict() if result is not None else {}), "algo": self.config.algo.name,
                   "env": self.config.env.id, **facts, **counters}
        path = self.out / "metrics.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
        return result
