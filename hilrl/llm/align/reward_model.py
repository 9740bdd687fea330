"""A reward model on TRL's ``RewardTrainer`` (Bradley–Terry on chosen/rejected, huggingface/trl) and
best-of-n with it: sample n answers, keep the one it scores highest (the selection step of RAFT, Dong et al.
2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment").

Texts are scored as the trainer saw them: a conversational row through the chat template
(prompt + the assistant's answer), a standard one as prompt + answer + eos. The held-out accuracy is counted
per pair: the pairs whose chosen answer scores above the rejected one, over the number of pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError

__all__ = ["RewardModelResult", "RewardScorer", "RewardSettings", "best_of_n", "train_reward_model"]


@dataclass
class RewardSettings:
    """One reward-model training.

    Args:
        learning_rate: AdamW's step size.
        epochs: passes over the pairs (ignored when ``max_steps`` is set).
        max_steps: optimiser steps (None: ``epochs`` decide).
        batch_size: pairs per step.
        max_length: most tokens of prompt + answer (longer pairs are dropped by TRL).
        held_out: fraction of the pairs kept for the held-out table.
        seed: data order and the new score head's init.
    """

    learning_rate: float = 1e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 128
    held_out: float = 0.2
    seed: int = 0

    def check(self) -> RewardSettings:
        if self.learning_rate <= 0 or self.batch_size < 1:
            raise HilrlError("reward model: learning rate must be > 0 and batch size >= 1")
        return self


@dataclass
class RewardModelResult:
    """The trained model, the held-out figures counted per pair (``pairs``, ``correct``, ``accuracy`` =
    correct/pairs, ``margin``, mean ``chosen`` and ``rejected`` rewards; empty without held-out pairs), the
    training wall time and steps."""

    model: Any
    held_out: dict[str, float]
    wall_s: float
    steps: int


def train_reward_model(model: Any, tokenizer: Any, train_rows: Sequence[dict[str, Any]],
                       held_out_rows: Sequence[dict[str, Any]], settings: RewardSettings, out: str | Path,
                       progress: Any = None) -> RewardModelResult:
    """Fit ``model`` (a sequence classifier with one output) on the pairs with TRL's ``RewardTrainer``, then score
    each held-out pair with it (TRL's ``evaluate()`` would average per-batch means, not count pairs).

    :param progress: a rich ``Progress`` (e.g. ``hilrl.runtime.progress.make_progress()``, started) to show
        what runs and the training steps in; None: nothing shown.
    """
    settings.check()
    from trl import RewardConfig, RewardTrainer

    from hilrl.llm.align._training import callbacks, common_args, pair_figures, quiet_hub, run_trainer, say
    from hilrl.llm.align.data import to_dataset

    quiet_hub()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = RewardConfig(**common_args(out, settings.seed, settings.batch_size, settings.learning_rate,
                                        settings.epochs, settings.max_steps), max_length=settings.max_length)
    say(progress, f"preparing TRL's RewardTrainer: tokenising {len(train_rows)} training pairs")
    trainer = RewardTrainer(model=model, args=config, train_dataset=to_dataset(train_rows),
                            processing_class=tokenizer, callbacks=callbacks(out, progress, "reward model"))

    def score(trained: Any) -> tuple[dict[str, float], list[dict[str, float]]]:
        say(progress, f"scoring the {len(held_out_rows)} held-out pairs, one at a time")
        chosen, rejected = RewardScorer(trained, tokenizer).score_pairs(held_out_rows)
        return pair_figures(chosen, rejected), [{"chosen": c, "rejected": r} for c, r in zip(chosen, rejected)]

    held, _, wall = run_trainer(trainer, settings, out, score if held_out_rows else None)
    return RewardModelResult(trainer.model, held, wall, trainer.state.global_step)


class RewardScorer:
    """Scores answers with a trained reward model.

    :param model: the sequence classifier (``num_labels=1``).
    :param tokenizer: its tokenizer (with a pad token).
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def _ids(self, prompt: Any, answer: str) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt + " " + answer + self.tokenizer.eos_token)["input_ids"]
        messages = [*prompt, {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]

    def _row_ids(self, prompt: Any, completion: Any) -> list[int]:
        """A preference row's answer as TRL's RewardTrainer tokenises it: prompt + completion (+ eos when a
        standard one lacks it), or the prompt's and completion's messages through the chat template."""
        if isinstance(prompt, str):
            eos = self.tokenizer.eos_token
            return self.tokenizer(prompt + completion + ("" if completion.endswith(eos) else eos))["input_ids"]
        return self.tokenizer.apply_chat_template([*prompt, *completion], tokenize=True, return_dict=True)["input_ids"]

    def _scores(self, rows: Sequence[list[int]]) -> list[float]:
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        self.model.eval()
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()

    def score(self, prompt: Any, answers: Sequence[str]) -> list[float]:
        """The reward of each answer to ``prompt``."""
        return self._scores([self._ids(prompt, a) for a in answers])

    def score_pairs(self, rows: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
        """The rewards of each preference row's chosen and rejected answer, one pair at a time."""
        scored = [self._scores([self._row_ids(row["prompt"], row[key]) for key in ("chosen", "rejected")])
                  for row in rows]
        return [c for c, _ in scored], [r for _, r in scored]


def best_of_n(scorer: RewardScorer, prompts: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[str]:
    """For each prompt, the candidate answer the reward model scores highest (RAFT's selection)."""
    chosen = []
    for prompt, answers in zip(prompts, candidates, strict=True):
        scores = scorer.score(prompt, answers)
        chosen.append(answers[max(range(len(answers)), key=scores.__getitem__)])
    return chosen
