"""The jobs behind ``hilrl align``: each loads what it needs, trains, writes its folder and returns a summary.

``OUT/`` of a job: ``model/`` (a transformers folder: ``--model OUT/model`` loads it), ``summary.json``,
``metrics.json`` (TRL's log), ``tensorboard/``; ``iterate`` adds ``preferences/`` (the store the labels
went to) and ``rounds.jsonl``.
"""

from __future__ import annotations

import json
import os
from math import nan
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError
from hilrl.llm.align._training import say
from hilrl.llm.align.dpo import DPOSettings
from hilrl.llm.align.iterate import IterateSettings, RoundResult
from hilrl.llm.align.reward_model import RewardSettings

__all__ = ["LABELLERS", "dpo_job", "example_data", "iterate_job", "reward_model_job"]

LABELLERS = ("verifier", "judge", "page")


def _write_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _prepare(model: str, data: str | os.PathLike, held_out: float, seed: int,
             progress: Any) -> tuple[list, list, Any, Any]:
    """Offline and quiet; the pairs split into training and held-out ones; the model's spec and tokenizer. The
    first status line comes before torch and TRL are imported (that takes seconds)."""
    say(progress, f"loading the pairs in {data}, torch, transformers and TRL, and the tokenizer of {model}")
    from hilrl.llm.align._training import quiet_hub
    from hilrl.llm.align.data import load_preferences, split_rows
    from hilrl.llm.align.models import load_tokenizer, resolve_model

    quiet_hub()
    train, held = split_rows(load_preferences(data), held_out, seed)
    if not train:
        raise HilrlError(f"{data}: no training pairs left after holding out {held_out:.0%}; add pairs or lower "
                         "--held-out")
    spec = resolve_model(model)
    tokenizer = load_tokenizer(spec)
    say(progress, f"{len(train)} training pairs, {len(held)} held out; loading the weights of {spec.name}")
    return train, held, spec, tokenizer


def dpo_job(model: str, data: str | os.PathLike, settings: DPOSettings, out: str | os.PathLike,
            progress: Any = None) -> dict[str, Any]:
    """``hilrl align dpo``: DPO-family training of ``model`` on the pairs in ``data``.

    The settings are checked before anything loads. The summary holds the held-out reward accuracy (the count
    of held-out pairs whose implicit reward β·log π/π_ref is higher for the chosen answer, over the number of
    pairs), the mean margin and rewards over pairs, and the policy's likelihood preference before and after.

    :param progress: a started rich ``Progress`` for status lines and the training steps; None: quiet.
    """
    settings.check()
    from hilrl.llm.align.dpo import train_dpo
    from hilrl.llm.align.models import load_causal_lm, save_model
    from hilrl.llm.align.sampling import preference_accuracy

    out = Path(out)
    train, held, spec, tokenizer = _prepare(model, data, settings.held_out, settings.seed, progress)
    policy = load_causal_lm(spec, tokenizer, settings.seed)
    result = train_dpo(policy, tokenizer, train, held, settings, out, progress=progress)
    # the policy's own likelihood preference before and after training, from the held-out scores of train_dpo:
    # before is the reference's (a frozen copy of the policy before training, or the model without its LoRA adapters)
    pairs = result.held_out_pairs
    before = preference_accuracy([p["ref_logp_chosen"] - p["ref_logp_rejected"] for p in pairs])[0] if pairs else nan
    after = preference_accuracy([p["logp_chosen"] - p["logp_rejected"] for p in pairs])[0] if pairs else nan
    saved = save_model(result.model, tokenizer, out / "model")
    return _write_summary(out, {
        "model": spec.name, "loss": settings.loss, "divergence": settings.divergence, "beta": settings.beta,
        "lora": settings.lora, "train_pairs": len(train), "held_out_pairs": len(held), "steps": result.steps,
        "train_wall_s": round(result.wall_s, 2),
        "held_out_reward_correct": result.held_out.get("correct"),
        "held_out_reward_accuracy": result.held_out.get("rewards/accuracies"),
        "held_out_reward_margin": result.held_out.get("rewards/margins"),
        "held_out_chosen_reward": result.held_out.get("rewards/chosen"),
        "held_out_rejected_reward": result.held_out.get("rewards/rejected"),
        "likelihood_accuracy_before": before, "likelihood_accuracy_after": after,
        "saved": str(saved)})


def reward_model_job(model: str, data: str | os.PathLike, settings: RewardSettings, out: str | os.PathLike,
                     progress: Any = None) -> dict[str, Any]:
    """``hilrl align reward-model``: a reward model on ``model``'s backbone from the pairs in ``data``. Its
    held-out accuracy is the count of held-out pairs it scores chosen above rejected, over their number.

    :param progress: a started rich ``Progress`` for status lines and the training steps; None: quiet.
    """
    settings.check()
    from hilrl.llm.align.models import load_reward_backbone, save_model
    from hilrl.llm.align.reward_model import train_reward_model

    out = Path(out)
    train, held, spec, tokenizer = _prepare(model, data, settings.held_out, settings.seed, progress)
    result = train_reward_model(load_reward_backbone(spec, tokenizer, settings.seed), tokenizer, train, held,
                                settings, out, progress=progress)
    saved = save_model(result.model, tokenizer, out / "model")
    return _write_summary(out, {
        "model": spec.name, "train_pairs": len(train), "held_out_pairs": len(held), "steps": result.steps,
        "train_wall_s": round(result.wall_s, 2), "held_out_reward_correct": result.held_out.get("correct"),
        "held_out_reward_accuracy": result.held_out.get("accuracy"),
        "held_out_reward_margin": result.held_out.get("margin"), "saved": str(saved)})


def example_data(out: str | os.PathLike, per_category: int | None = None, conversational: bool = True,
                 seed: int = 0) -> tuple[Path, int]:
    """Write the rule task's preference pairs (:mod:`hilrl.llm.align.task`) as TRL JSONL."""
    from hilrl.llm.align.data import write_jsonl
    from hilrl.llm.align.task import RuleTask

    rows = RuleTask(seed=seed, conversational=conversational).pairs(per_category)
    return write_jsonl(rows, out), len(rows)


class _ScriptedJudgeLLM:
    """The offline judge: a local OpenAI-protocol server answering by the rule task's check, reached through
    our openai provider (so the judge's prompt, HTTP, JSON validation and the store all run)."""

    def __enter__(self) -> Any:
        from hilrl.llm.align.judge import scripted_rule_judge
        from hilrl.llm.providers import LLMConfig, make_llm
        from hilrl.llm.scripted_server import ScriptedServer

        self.server = ScriptedServer(scripted_rule_judge(), model="scripted-rule-judge")
        self.llm = make_llm(LLMConfig(base_url=self.server.base_url, model="scripted-rule-judge", backoff_s=0.01))
        return self.llm

    def __exit__(self, *exc: Any) -> None:
        self.llm.close()
        self.server.close()


def iterate_job(model: str, labeller: str, settings: IterateSettings, out: str | os.PathLike,
                judge_llm: str = "scripted", principles: Sequence[str] | None = None, progress: Any = None,
                on_round: Callable[[RoundResult], None] | None = None) -> dict[str, Any]:
    """``hilrl align iterate`` on the rule task: sample → label (``labeller``) → DPO, ``settings.rounds`` times.

    :param labeller: ``verifier`` (the task's programmatic check), ``judge`` (an LLM judge with
        ``principles``) or ``page`` (people, on ``hilrl label OUT``).
    :param judge_llm: ``scripted`` (the offline stand-in judge) or an LLM config YAML (``--llm``).
    :param progress: a started rich ``Progress`` for status lines and each round's DPO steps; None: quiet.
    """
    if labeller not in LABELLERS:
        raise HilrlError(f"--labeller {labeller!r}: allowed {', '.join(LABELLERS)}")
    settings.check()
    say(progress, f"loading torch, transformers and TRL, and {model}")
    from contextlib import nullcontext

    from hilrl.feedback.preferences.store import PreferenceStore
    from hilrl.llm.align._training import quiet_hub
    from hilrl.llm.align.iterate import PageLabelling, iterate
    from hilrl.llm.align.judge import DEFAULT_PRINCIPLES, AIJudge
    from hilrl.llm.align.models import load_causal_lm, load_tokenizer, resolve_model, save_model
    from hilrl.llm.align.task import RuleTask, RuleVerifier, satisfies
    from hilrl.llm.providers import load_llm_config, make_llm

    quiet_hub()
    out = Path(out)
    store = PreferenceStore.for_run(out)
    if labeller == "judge" and judge_llm != "scripted":
        context: Any = nullcontext(make_llm(load_llm_config(judge_llm), out / "llm_calls.jsonl"))
    elif labeller == "judge":
        context = _ScriptedJudgeLLM()
    else:
        context = nullcontext(None)
    spec = resolve_model(model)
    tokenizer = load_tokenizer(spec)
    policy = load_causal_lm(spec, tokenizer, settings.seed)
    conversational = bool(getattr(tokenizer, "chat_template", None))
    with context as llm:
        chosen = {"verifier": lambda: RuleVerifier(), "page": lambda: PageLabelling(),
                  "judge": lambda: AIJudge(llm, principles or DEFAULT_PRINCIPLES)}[labeller]()
        policy, rounds = iterate(policy, tokenizer, RuleTask(seed=settings.seed, conversational=conversational),
                                 chosen, store, settings, out, check=satisfies, progress=progress, on_round=on_round)
    saved = save_model(policy, tokenizer, out / "model")
    return _write_summary(out, {"model": spec.name, "labeller": labeller, "rounds": [r.__dict__ for r in rounds],
                                "store": str(store.folder), "saved": str(saved)})
