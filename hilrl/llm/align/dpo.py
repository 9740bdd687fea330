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
from collections.abc import Callable, Sequence
from contextlib import nullcontext
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
    """What a training returns: the trained model, the held-out figures (TRL's names, counted per pair: ``pairs``,
    ``correct``, ``rewards/accuracies`` = correct/pairs, ``rewards/margins``, ``rewards/chosen``,
    ``rewards/rejected``; empty without held-out pairs), TRL's training log, and per held-out pair its implicit
    rewards (``chosen``, ``rejected``) and summed log-probabilities under the policy (``logp_chosen``,
    ``logp_rejected``) and the reference (``ref_logp_chosen``, ``ref_logp_rejected``)."""

    model: Any
    held_out: dict[str, float]
    history: list[dict[str, Any]]
    wall_s: float
    steps: int
    held_out_pairs: list[dict[str, float]] = field(default_factory=list)


def _lora_config(settings: DPOSettings, model: Any) -> Any:
    from peft import LoraConfig

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj") if n in names]
    return LoraConfig(r=settings.lora_r, lora_alpha=2 * settings.lora_r, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM", fan_in_fan_out="c_attn" in targets)


def _held_out_scorer(tokenizer: Any, rows: Sequence[dict[str, Any]], beta: float, reference: Any,
                     progress: Any) -> Callable[[Any], tuple[dict[str, float], list[dict[str, float]]]]:
    """Scores the held-out ``rows`` with the trained policy: each pair's implicit rewards β·log π/π_ref of its
    chosen and rejected answer (Rafailov et al. 2023; TRL's ``rewards/chosen`` and ``rewards/rejected``, here
    one pair at a time), and the figures counted over pairs. ``reference`` None: the policy's LoRA adapters
    are switched off for π_ref, as TRL does."""

    def score(trained: Any) -> tuple[dict[str, float], list[dict[str, float]]]:
        from hilrl.llm.align._training import full_precision, pair_figures, say
        from hilrl.llm.align.sampling import completion_logps

        say(progress, f"scoring the {len(rows)} held-out pairs, one at a time")
        policy = {key: completion_logps(trained, tokenizer, rows, key) for key in ("chosen", "rejected")}
        with trained.disable_adapter() if reference is None else nullcontext():
            base_model = trained if reference is None else full_precision(reference)
            base = {key: completion_logps(base_model, tokenizer, rows, key) for key in ("chosen", "rejected")}
        chosen, rejected = (beta * (policy[key] - base[key]) for key in ("chosen", "rejected"))
        figures = pair_figures(chosen, rejected)
        held = {"pairs": figures["pairs"], "correct": figures["correct"], "rewards/accuracies": figures["accuracy"],
                "rewards/margins": figures["margin"], "rewards/chosen": figures["chosen"],
                "rewards/rejected": figures["rejected"]}
        columns = {"chosen": chosen, "rejected": rejected, "logp_chosen": policy["chosen"],
                   "logp_rejected": policy["rejected"], "ref_logp_chosen": base["chosen"],
                   "ref_logp_rejected": base["rejected"]}
        return held, [{name: float(values[i]) for name, values in columns.items()} for i in range(len(rows))]

    return score


def train_dpo(model: Any, tokenizer: Any, train_rows: Sequence[dict[str, Any]],
              held_out_rows: Sequence[dict[str, Any]], settings: DPOSettings, out: str | Path,
              reference: Any = None, progress: Any = None) -> DPOResult:
    """Train ``model`` on ``train_rows`` with TRL's ``DPOTrainer``, then score each of ``held_out_rows``.

    The held-out figures are counted per pair (:func:`~hilrl.llm.align._training.pair_figures`): the reward
    accuracy is the number of held-out pairs whose chosen answer's implicit reward is above the rejected
    one's, over the number of pairs. (TRL's ``evaluate()`` averages per-batch means, not a count.)

    :param reference: the reference policy π_ref (default a frozen copy of ``model`` as it is now; with
        LoRA, the model without its adapters).
    :param out: the training folder (TensorBoard under ``out/tensorboard``, ``metrics.json``).
    :param progress: a rich ``Progress`` (e.g. ``hilrl.runtime.progress.make_progress()``, started) to show
        what runs and the training steps in; None: nothing shown.
    """
    settings.check()
    from trl import DPOTrainer

    from hilrl.llm.align._training import callbacks, quiet_hub, run_trainer, say
    from hilrl.llm.align.data import to_dataset

    quiet_hub()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peft_config = _lora_config(settings, model) if settings.lora else None
    say(progress, f"preparing TRL's DPOTrainer: tokenising {len(train_rows)} training pairs"
                  + (", LoRA adapters" if peft_config is not None else ""))
    if reference is None and peft_config is None:
        # a model built from a config has no hub name: with ref_model=None TRL would try to download it
        reference = copy.deepcopy(model)
    trainer = DPOTrainer(model=model, ref_model=reference, args=settings.trl_config(out),
                         train_dataset=to_dataset(train_rows), processing_class=tokenizer, peft_config=peft_config,
                         callbacks=callbacks(out, progress, f"DPO ({settings.loss}, {settings.divergence})"))
    scorer = _held_out_scorer(tokenizer, held_out_rows, settings.beta, reference, progress) if held_out_rows else None
    held, pairs, wall = run_trainer(trainer, settings, out, scorer)
    history = [dict(h) for h in trainer.state.log_history]
    return DPOResult(trainer.model, held, history, wall, trainer.state.global_step, pairs)
