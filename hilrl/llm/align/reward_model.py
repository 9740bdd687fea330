"""A reward model on TRL's ``RewardTrainer`` (Bradley–Terry on chosen/rejected, huggingface/trl) and
best-of-n with it: sample n answers, keep the one it scores highest (the selection step of RAFT, Dong et al.
2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment").

Texts are scored as the trainer saw them: a conversational row through the chat template
(prompt + the assistant's answer), a standard one as prompt + answer + eos.
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
    model: Any
    held_out: dict[str, float]
    wall_s: float
    steps: int


def train_reward_model(model: Any, tokenizer: Any, train_rows: Sequence[dict[str, Any]],
                       held_out_rows: Sequence[dict[str, Any]], settings: RewardSettings, out: str | Path,
                       progress: bool = False) -> RewardModelResult:
    """Fit ``model`` (a sequence classifier with one output) on the pairs with TRL's ``RewardTrainer``."""
    settings.check()
    from trl import RewardConfig, RewardTrainer

    from hilrl.llm.align._training import callbacks, common_args, quiet_hub, run_trainer
    from hilrl.llm.align.data import to_dataset

    quiet_hub()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = RewardConfig(**common_args(out, settings.seed, settings.batch_size, settings.learning_rate,
                                        settings.epochs, settings.max_steps), max_length=settings.max_length)
    trainer = RewardTrainer(model=model, args=config, train_dataset=to_dataset(train_rows),
                            eval_dataset=to_dataset(held_out_rows) if held_out_rows else None,
                            processing_class=tokenizer, callbacks=callbacks(out, progress, "reward model"))
    held, wall = run_trainer(trainer, settings, out, evaluate=bool(held_out_rows))
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

    def score(self, prompt: Any, answers: Sequence[str]) -> list[float]:
        """The reward of each answer to ``prompt``."""
        import torch

        rows = [self._ids(prompt, a) for a in answers]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        self.model.eval()
        with torch.no_grad():
            return self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()


def best_of_n(scorer: RewardScorer, prompts: Sequence[Any], candidates: Sequence[Sequence[str]]) -> list[str]:
    """For each prompt, the candidate answer the reward model scores highest (RAFT's selection)."""
    chosen = []
    for prompt, answers in zip(prompts, candidates, strict=True):
        scores = scorer.score(prompt, answers)
        chosen.append(answers[max(range(len(answers)), key=scores.__getitem__)])
    return chosen
