"""The DPO family on TRL's ``DPOTrainer`` (huggingface/trl, pinned: trl==1.16.0); nothing of DPO is rewritten here.

Losses (TRL's ``loss_type``): ``sigmoid`` is DPO (Rafailov et al. 2023, "Direct Preference
Optimization"), ``ipo`` is IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning
from Human Preferences"; β is its τ), ``hinge`` is SLiC's, ``robust`` is robust DPO for noisy labels
(Chowdhury et al. 2024; ``label_smoothing`` = the flip rate ε, as in cDPO), and the rest as TRL has them.
The divergence (TRL's ``f_divergence_type``) is f-DPO's (Wang et al. 2023, "Beyond Reverse KL:
Generalizing Direct Preference Optimization with Diverse Divergence Constraints"): ``reverse_kl`` (DPO),
``forward_kl``, ``js_divergence``, ``alpha_divergence`` (with ``alpha``).

:meth:`DPOSettings.check` refuses an unknown loss, an unknown divergence, or a divergence the loss has
no f-DPO form for, in one line naming the allowed ones, before any model loads (TRL rejects an unknown
divergence only at the first training step).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError

__all__ = ["DIVERGENCES", "F_DIVERGENCE_LOSSES", "LOSSES", "DPOResult", "DPOSettings", "train_dpo"]

# TRL 1.16's DPOConfig.loss_type values and the ones its f-divergence branch supports (dpo_trainer.py)
LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
          "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
F_DIVERGENCE_LOSSES = ("sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft")
DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class DPOSettings:
    """One DPO-family training.

    Args:
        loss: TRL's ``loss_type`` (:data:`LOSSES`).
        divergence: TRL's ``f_divergence_type`` (:data:`DIVERGENCES`); a non-default one only with
            :data:`F_DIVERGENCE_LOSSES`.
        alpha: the α of ``alpha_divergence`` (TRL's ``f_alpha_divergence_coef``).
        beta: the KL (or divergence) weight β; IPO's τ.
        label_smoothing: robust DPO's / cDPO's label-flip rate ε (default 0.1 for ``robust``, else 0).
        learning_rate: AdamW's step size.
        epochs: passes over the training pairs (ignored when ``max_steps`` is set).
        max_steps: optimiser steps (None: ``epochs`` decide).
        batch_size: pairs per step.
        max_length: most tokens of prompt + answer.
        lora: train LoRA adapters (peft) instead of all weights; the reference is the adapter-free model.
        lora_r: LoRA rank.
        held_out: fraction of the pairs kept for the held-out table.
        seed: data order, init of new weights, sampling.
        extra: further TRL ``DPOConfig`` fields, e.g. ``{"precompute_ref_log_probs": True}`` (one reference
            pass over the data instead of one per step).
    """

    loss: str = "sigmoid"
    divergence: str = "reverse_kl"
    alpha: float = 0.5
    beta: float = 0.1
    label_smoothing: float | None = None
    learning_rate: float = 5e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 128
    lora: bool = False
    lora_r: int = 8
    held_out: float = 0.2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> DPOSettings:
        """Raise :class:`HilrlError` (one line, naming what is allowed) for a loss/divergence TRL cannot run."""
        if self.loss not in LOSSES:
            raise HilrlError(f"--loss {self.loss!r} is not a DPO loss; allowed: {', '.join(LOSSES)}")
        if self.divergence not in DIVERGENCES:
            raise HilrlError(f"--divergence {self.divergence!r} is not an f-divergence TRL has; allowed: "
                             f"{', '.join(DIVERGENCES)}")
        if self.divergence != "reverse_kl" and self.loss not in F_DIVERGENCE_LOSSES:
            raise HilrlError(f"--divergence {self.divergence} does not go with --loss {self.loss} (no f-DPO form); "
                             f"with --divergence {self.divergence} use one of the losses "
                             f"{', '.join(F_DIVERGENCE_LOSSES)}, or keep --divergence reverse_kl")
        if self.beta <= 0:
            raise HilrlError(f"--beta {self.beta} must be > 0")
        smoothing = self.smoothing()
        if self.loss == "robust" and not 0.0 <= smoothing < 0.5:
            raise HilrlError(f"label_smoothing {smoothing} for robust DPO is a flip rate in [0, 0.5)")
        if self.divergence == "alpha_divergence" and not 0.0 < self.alpha < 1.0:
            raise HilrlError(f"--alpha {self.alpha}: the α of alpha_divergence lies in (0, 1)")
        return self

    def smoothing(self) -> float:
        if self.label_smoothing is not None:
            return self.label_smoothing
        return 0.1 if self.loss == "robust" else 0.0

    def trl_config(self, out: Path) -> Any:
        """TRL's ``DPOConfig`` for these settings."""
        from trl import DPOConfig

        from hilrl.llm.align._training import common_args

        return DPOConfig(**common_args(out, self.seed, self.batch_size, self.learning_rate, self.epochs,
                                       self.max_steps),
                         loss_type=[self.loss], f_divergence_type=self.divergence,
                         f_alpha_divergence_coef=self.alpha, beta=self.beta, label_smoothing=self.smoothing(),
                         max_length=self.max_length, **self.extra)


@dataclass
class DPOResult:
    """What a training returns: the trained model, TRL's held-out metrics and the training log."""

    model: Any
    held_out: dict[str, float]
    history: list[dict[str, Any]]
    wall_s: float
    steps: int


def _lora_config(settings: DPOSettings, model: Any) -> Any:
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj") if n in names]
    return LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", fan_in_fan_out="c_attn" in targets)


def train_dpo(model: Any, tokenizer: Any, train_rows: Sequence[dict[str, Any]],
              held_out_rows: Sequence[dict[str, Any]], settings: DPOSettings, out: str | Path,
              reference: Any = None, progress: bool = False) -> DPOResult:
    """Train ``model`` on ``train_rows`` with TRL's ``DPOTrainer``; evaluate on ``held_out_rows``.

    :param reference: the reference policy π_ref (default a frozen copy of ``model`` as it is now; with
        LoRA, the model without its adapters).
    :param out: the training folder (TensorBoard under ``out/tensorboard``, ``metrics.json``).
    :param progress: show a progress bar.
    """
    settings.check()
    from trl import DPOTrainer

    from hilrl.llm.align._training import callbacks, quiet_hub, run_trainer
    from hilrl.llm.align.data import to_dataset

    quiet_hub()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_config = _lora_config(settings, model) if settings.lora else None
    if reference is None and peft_config is None:
        # a model built from a config has no hub name: with ref_model=None TRL would try to download it
        reference = copy.deepcopy(model)
    trainer = DPOTrainer(model=model, ref_model=reference, args=settings.trl_config(out),
                         train_dataset=to_dataset(train_rows),
                         eval_dataset=to_dataset(held_out_rows) if held_out_rows else None,
                         processing_class=tokenizer, peft_config=peft_config,
                         callbacks=callbacks(out, progress, f"DPO ({settings.loss}, {settings.divergence})"))
    held, wall = run_trainer(trainer, settings, out, evaluate=bool(held_out_rows))
    history = [dict(h) for h in trainer.state.log_history]
    trained = trainer.model
    return DPOResult(trained, held, history, wall, trainer.state.global_step)
