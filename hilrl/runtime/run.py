"""The run folder every loop writes: one layout, one resume, one checkpoint format per algorithm.

::

    OUT/config.yaml            the resolved config (every default filled in); a folder holding a started run
                               of another config is refused (:func:`check_same_run`)
    OUT/demos.hdf5             demos recorded for this run (when the config names no file)
    OUT/tb/                    TensorBoard scalars
    OUT/checkpoints/step_N.pt  {"algo": name, "experiment": config, "state": algorithm state, "counters": ...,
                               "replay": {"online": file, "demo": file}, loop state...}; written to a temp
                               file and renamed, after the replay files it names
    OUT/checkpoints/replay_{online,demo}_N.npz   the buffers at step N (only the newest are kept)
    OUT/checkpoints/best.pt    with train.keep_best: the best evaluated policy
    OUT/metrics.json           final evaluation, counters and facts of the run
    OUT/final_policy.mp4       the final policy's first test episodes

The same layout whichever loop wrote it (local, distributed learner, DAgger, offline, SB3), so
``hilrl eval`` and :func:`hilrl.runtime.evaluate.load_policy` read any run. A run resumes from
its newest *complete* checkpoint (every file it names exists).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hilrl.config import ExperimentConfig, dump_config, load_config
from hilrl.errors import HilrlError

BEST_CHECKPOINT = "best.pt"


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


def _changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumped configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _changed_settings(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def check_same_run(config: ExperimentConfig, out: Path) -> None:
    """Refuse a folder that holds another experiment's run; only ``train.steps`` may change (``--steps MORE``).

    Why: a folder with checkpoints (or a learner's log) is resumed, and its ``config.yaml`` is
    the record of what was run; a different config would mix two experiments in one run and
    overwrite that record.
    """
    saved = out / "config.yaml"
    started = bool(step_checkpoints(out)) or (out / "log").is_dir()
    if not saved.is_file() or not started:
        return
    old = load_config(saved).model_dump(mode="json")
    new = config.model_dump(mode="json")
    old["train"]["steps"] = new["train"]["steps"]
    changed = _changed_settings(old, new)
    if changed:
        raise HilrlError(f"{out} holds a run of another config ({'; '.join(changed)}); it would be resumed under "
                         f"the new settings and its config.yaml overwritten. Pass a new --out folder, or put those "
                         f"settings back to continue that run.")


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
        if demos.keep_after_success is not None:
            episodes = [episode.cut_after_success(demos.keep_after_success) for episode in episodes]
        return episodes

    def bc_rollouts(self, demo_episodes: list, show_progress: bool = True) -> list:
        """``demos.bc_rollouts`` episodes of a BC policy fitted on ``demo_episodes``, cut after success like the demos.

        RLPD's few-demo setting (Ball et al. 2023, ikostrikov/rlpd ``include_bc_data``) adds such rollouts
        to the offline data, so the critic sees the states just off the demos, where a policy from few demos
        drifts first. Recorded once into ``OUT/bc_rollouts.hdf5`` (seeds after the demos'; a resumed run
        reads the file) with :class:`~hilrl.policies.bc.BC` on the learner's state keys, 3000 steps.
        """
        from hilrl.data.hdf5 import DemoFile
        from hilrl.runtime.record import record_bc_rollouts
        from hilrl.runtime.seeds import Seeds

        demos = self.config.demos
        if not demos.bc_rollouts:
            return []
        path = self.out / "bc_rollouts.hdf5"
        if not path.exists():
            record_bc_rollouts(self.config.env, demo_episodes, path, demos.bc_rollouts,
                               obs_keys=getattr(self.config.algo, "obs_keys", None),
                               seed=Seeds(self.config.train.seed).demo(len(demo_episodes)),
                               train_seed=self.config.train.seed, show_progress=show_progress)
        with DemoFile(path) as file:
            episodes = [file.episode(name) for name in file.demo_names]
        if len(episodes) != demos.bc_rollouts:
            raise HilrlError(f"{path} holds {len(episodes)} BC rollouts, the config asks for {demos.bc_rollouts}; "
                             "delete the file to record them again, or pass a new --out folder")
        if demos.keep_after_success is not None:
            episodes = [episode.cut_after_success(demos.keep_after_success) for episode in episodes]
        return episodes

    def _demo_mismatches(self, stored: dict[str, Any], episodes: list, own: bool) -> list[str]:
        """What differs between the config and a demo file (its ``env_args`` and episodes)."""
        env, demos = self.config.env, self.config.demos
        problems = []
        if stored.get("env_name") != env.id:
            problems.append(f"env.id: file {stored.get('env_name')!r}, config {env.id!r}")
        kwargs = env.make_kwargs()
        kwargs["cameras"] = list(kwargs["cameras"])
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

    def latest_checkpoint(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest ``step_N.pt`` whose replay files (if it names any) are all there, loaded."""
        for path in reversed(step_checkpoints(self.out)):
            state = load_checkpoint(path)
            names = state.get("replay")
            if names is None or all((self.ckpt_dir / name).is_file() for name in names.values()):
                return path, state
        return None

    def resume(self, algo: Any, replay: Any = None) -> dict[str, Any] | None:
        """Load the newest complete checkpoint into ``algo`` (and ``replay``); returns it, or ``None`` (fresh run)."""
        found = self.latest_checkpoint()
        if found is None:
            return None
        path, state = found
        if replay is not None and state.get("replay") is None:
            # the files the local loop wrote before checkpoints named their buffers
            legacy = {"online": "replay_online.npz", "demo": "replay_demo.npz"}
            if not all((self.ckpt_dir / name).is_file() for name in legacy.values()):
                raise HilrlError(f"{path} names no replay buffers to resume from (an offline or SB3 run); pass a "
                                 "new --out folder")
            state["replay"] = legacy
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

    # ---------------------------------------------------------------- the end

    def finish(self, algo: Any, checkpoint: Path, counters: dict[str, Any] | None, step: int,
               show_progress: bool = True, evaluate: bool = True, **facts: Any) -> Any:
        """The end of every loop: the final evaluation of ``algo`` on test seeds (``train.eval_episodes``, video
        with ``train.video``), its scalars, and ``OUT/metrics.json`` with ``counters`` and ``facts``."""
        from hilrl.runtime.evaluate import final_evaluation, write_metrics

        result = None
        if evaluate:
            result = final_evaluation(self.config, lambda o: algo.act(o, deterministic=True), self.out, checkpoint,
                                      show_progress)
            prefix = "eval/best_policy_" if checkpoint.name == BEST_CHECKPOINT else "eval/"
            self.scalars(step, {"success_rate": result.success_rate, "mean_return": result.mean_return}, prefix)
        self.close()
        write_metrics(self.out, result, counters, algo=self.config.algo.name, env=self.config.env.id, **facts)
        return result
