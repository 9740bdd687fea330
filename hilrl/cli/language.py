"""Language-model jobs: `hilrl reward-search` (Eureka, ICPL), `hilrl correct` (DROC) and `hilrl kb` (its knowledge)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from hilrl.cli.common import out
from hilrl.errors import HilrlError


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
    task_text: Optional[Path] = typer.Option(None, help="a text file describing the task (a foreign env's; default: "
                                                        "generated from its spaces and docstring)"),
    samples_per_request: Optional[int] = typer.Option(
        None, min=0, help="answers per LLM request; 1: each candidate trains while the LLM writes the next sample "
                          "(default 1 for a local model, which writes one after another; else 0: all K at once)"),
) -> None:
    """Search a reward with an LLM (Eureka or ICPL); the winner is OUT/best/reward.py for `reward: {source: code}`."""
    import yaml

    from hilrl.apps.reward_search import SearchSettings
    from hilrl.apps.reward_search import reward_search as search
    from hilrl.llm.providers import load_llm_config, make_llm

    base_sections = {}
    if base is not None:
        if not base.is_file():
            raise HilrlError(f"--base {base}: no such file; give an experiment YAML (e.g. sim_configs/reach_sac.yaml)")
        raw = yaml.safe_load(base.read_text()) or {}
        base_env = raw.get("env") or {}
        if base_env.get("id", task) != task:
            raise HilrlError(f"--base {base}: its env.id {base_env['id']!r} is not --task {task!r}; the base's env "
                             "section (package, kwargs, ...) applies to the task it names: give --task "
                             f"{base_env['id']} or remove env from the base")
        base_sections = {k: v for k, v in raw.items() if k != "reward"}
    folder = out_dir or Path("runs") / f"{method}_{task.split('/')[-1]}"
    config = load_llm_config(llm)
    if samples_per_request is None:  # a server samples K in parallel; a local model writes one after another
        samples_per_request = 0 if config.provider in ("openai", "scripted", "replay") else 1
    settings = SearchSettings(method, task, samples=samples, iterations=iterations, steps=steps, seed=seed,
                              final_seeds=final_seeds, final_steps=final_steps, base=base_sections, human=human,
                              samples_per_request=samples_per_request,
                              task_file=str(task_text) if task_text is not None else None)
    if config.provider == "local" and config.threads is None and samples_per_request:
        from hilrl.llm.providers import default_threads  # candidates train while the model writes: half the cores

        config = config.model_copy(update={"threads": default_threads(beside_training=True)})
    model = make_llm(config, folder / "llm_calls.jsonl")
    out.print(f"{method} on {task} with the {model.provider} LLM {model.model}: {samples} samples x {iterations} "
              f"iterations, candidates on {backend}; folder {folder}")
    try:
        summary = search(settings, model, folder, backend=backend, workers=workers)
    finally:
        model.close()
    table = Table(title=f"{method} reward search on {task}")
    for column in ("iteration", "execute rate", "best fitness (success)", "generation s", "training s", "total s"):
        table.add_column(column)
    for it in summary["iterations"]:
        cost = it.get("cost", {})
        table.add_row(str(it["iteration"]), f"{it['execute_rate']:.2f}",
                      f"{it['best_fitness']:.0%}" if "best_fitness" in it else "no sample ran",
                      *(f"{cost[k]:.1f}" if k in cost else "-" for k in ("generation_s", "training_s", "total_s")))
    out.print(table)
    final = summary.get("final")
    if final:
        scores = final["scores"]
        norm = final["human_normalised"]
        line = f"retrained ({len(final['seeds'])} seeds): best reward {scores['best']['success_rate']:.0%}, "
        if "human" in scores:
            line += (f"sparse {scores['sparse']['success_rate']:.0%}, task's dense "
                     f"{scores['human']['success_rate']:.0%}; human-normalised score "
                     f"{'undefined (dense = sparse)' if norm is None else f'{norm:.2f}'}")
        else:
            line += (f"the env's own reward {scores['sparse']['success_rate']:.0%} (no human-normalised score: {task} "
                     "has no dense reward of its task's authors that hilrl knows)")
        out.print(line)
    if summary["reward_path"]:
        out.print(f"best reward: {summary['reward_path']}  (train on it: reward: {{source: code, path: "
                  f"{summary['reward_path']}}})")
    else:
        out.print("no reward program trained; see the iterations' feedback.txt files")
        raise typer.Exit(1)


def correct(
    config: Path = typer.Argument(..., help="correction-session YAML, e.g. sim_configs/correct_pick_tall.yaml"),
    kb: Optional[Path] = typer.Option(None, "--kb", help="knowledge-base folder (default: the config's kb)"),
) -> None:
    """Teach the arm with language corrections (DROC): plan, run skill by skill, correct it in words, keep what it learns."""
    from hilrl.apps.correction_sessions import correct_in_terminal
    from hilrl.llm.droc.config import load_correction_config

    outcome = correct_in_terminal(load_correction_config(config), str(kb) if kb else None)
    if not outcome.success:
        raise typer.Exit(1)


kb_app = typer.Typer(help="Inspect and edit the knowledge base of language corrections.", no_args_is_help=True)
KB_OPTION = typer.Option(Path("runs/knowledge"), "--kb", help="knowledge-base folder")


@kb_app.command("list")
def kb_list(kb: Path = KB_OPTION) -> None:
    """One line per live entry."""
    from hilrl.llm.droc.knowledge import KnowledgeBase

    entries = KnowledgeBase(kb, create=False).entries()
    for entry in entries:
        out.print(entry.summary(), markup=False, highlight=False)
    out.print(f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'} in {kb}", markup=False, highlight=False)


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
    out.print(f"forgot {entry.summary()}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.command(name="reward-search")(reward_search)
    app.command()(correct)
    app.add_typer(kb_app, name="kb")
