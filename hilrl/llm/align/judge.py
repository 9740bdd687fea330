"""AI feedback: an LLM judge given a short list of written principles labels pairs of the policy's own samples.

The judge follows the constitutional recipe of RLAIF (Bai et al. 2022, "Constitutional AI: Harmlessness
from AI Feedback": a model compares two answers against written principles) and SELF-ALIGN's short list of
principles (Sun et al. 2023, "Principle-Driven Self-Alignment of Language Models from Scratch with Minimal
Human Supervision"). It asks through our :class:`~hilrl.llm.providers.LLM` (any OpenAI-compatible server,
a local model, a replayed log) for ``{"reason", "better"}`` JSON, validated with pydantic. With ``swap`` it
asks again with the answers in the other order and calls a pair ``equal`` when the two verdicts disagree
(position bias; Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").

Labels and the judge's reasons go into the same preference store as people's labels, marked ``ai``
(:func:`label_pairs`). :func:`scripted_rule_judge` is an offline stand-in for tests and the README: a
``turn(request_body)`` for :class:`~hilrl.llm.scripted_server.ScriptedServer` that reads the two answers out
of the judge's prompt and applies the rule task's check, so the whole path (prompt, HTTP, SDK, JSON
validation, store) runs with no model behind it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, field_validator

from hilrl.llm.align.task import prompt_text, rule_score

__all__ = ["AIJudge", "DEFAULT_PRINCIPLES", "Labeller", "Verdict", "label_pairs", "scripted_rule_judge"]

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
DEFAULT_PRINCIPLES = (
    "Follow the instruction of the system message exactly.",
    "Answer the question that was asked.",
    "Say nothing beyond the answer.",
)


class Verdict(BaseModel):
    """The judge's answer, ``{"reason": "...", "better": "A" | "B" | "tie"}``. What a small model writes for the
    same verdict is read as it (``"a"``, ``"Answer B"``, ``"equal"``, ``"neither"``; no reason); anything else
    is refused with the values allowed, for the retry."""

    reason: str = ""
    better: Literal["A", "B", "tie"]

    @field_validator("better", mode="before")
    @classmethod
    def _better(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f'better must be the string "A", "B" or "tie"; got {value!r}')
        words = value.strip().strip(".!").upper().replace("ANSWER", "").replace("RESPONSE", "").split()
        if words and words[0] in ("A", "B") and (len(words) == 1 or words[1:] in (["IS", "BETTER"], ["BETTER"])):
            return words[0]
        if " ".join(words) in ("TIE", "EQUAL", "NEITHER", "BOTH", "SAME", "DRAW", "BOTH EQUAL"):
            return "tie"
        raise ValueError(f'better must be exactly "A", "B" or "tie"; got {value!r}')


class Labeller(Protocol):
    """Anything that labels a pair: an AI judge, a programmatic verifier (``who``: how labels are marked)."""

    who: str

    def compare(self, prompt: Any, first: str, second: str) -> tuple[str, str]:
        """``(label, reason)``: label ``first``, ``second`` or ``equal``."""
        ...


class AIJudge:
    """An LLM judging pairs by written principles.

    :param llm: the provider (``make_llm``), e.g. an OpenAI-compatible server.
    :param principles: the principles, most important first.
    :param swap: also judge with the answers swapped; disagreeing verdicts make the pair ``equal``.
    :param temperature: the judge's sampling temperature (0: its most likely verdict).
    """

    who = "ai"

    def __init__(self, llm: Any, principles: Sequence[str] = DEFAULT_PRINCIPLES, swap: bool = True,
                 temperature: float = 0.0) -> None:
        self.llm, self.principles, self.swap, self.temperature = llm, list(principles), swap, temperature
        listed = "\n".join(f"{i}. {p}" for i, p in enumerate(self.principles, 1))
        self.system = (PROMPTS / "align_judge_system.txt").read_text().format(principles=listed)
        self.user = (PROMPTS / "align_judge_user.txt").read_text()

    def messages(self, prompt: Any, a: str, b: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.format(prompt=prompt_text(prompt), a=a, b=b)}]

    def _verdict(self, prompt: Any, a: str, b: str) -> Verdict:
        return self.llm.chat_json(self.messages(prompt, a, b), Verdict, temperature=self.temperature,
                                  purpose="align-judge")

    def compare(self, prompt: Any, first: str, second: str) -> tuple[str, str]:
        verdict = self._verdict(prompt, first, second)
        label = {"A": "first", "B": "second", "tie": "equal"}[verdict.better]
        if not self.swap:
            return label, verdict.reason
        swapped = self._verdict(prompt, second, first)
        again = {"A": "second", "B": "first", "tie": "equal"}[swapped.better]
        if again != label:
            return "equal", f"position-dependent verdicts ({label} / {again}): {verdict.reason} | {swapped.reason}"
        return label, verdict.reason


def label_pairs(store: Any, labeller: Labeller, pairs: Sequence[tuple[Any, str, str]],
                meta: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """Put each ``(prompt, first, second)`` into ``store`` as a text query and label it with ``labeller``
    (marked ``labeller.who``, the reason kept). Returns ``(query id, label, reason)`` per pair."""
    from hilrl.llm.align.data import add_text_query

    made = []
    for prompt, first, second in pairs:
        qid = add_text_query(store, prompt, [first, second], meta)
        label, reason = labeller.compare(prompt, first, second)
        store.add_label(qid, label, labeller.who, reason=reason)
        made.append((qid, label, reason))
    return made


_ANSWER_BLOCK = r"<<<{tag}\n(.*?)\n{tag}>>>"


def scripted_rule_judge(score: Callable[[str], float] = rule_score) -> Callable[[dict], list[str]]:
    """A ``turn(request_body)`` answering judge requests by ``score`` (higher wins; module docstring)."""

    def turn(body: dict) -> list[str]:
        text = body["messages"][-1]["content"]
        found = [re.search(_ANSWER_BLOCK.format(tag=tag), text, re.S) for tag in ("A", "B")]
        if not all(found):
            verdict = {"reason": "the prompt holds no answers A and B", "better": "tie"}
        else:
            a, b = (score(m.group(1)) for m in found)
            if abs(a - b) < 1e-9:
                verdict = {"reason": "both answers follow principle 1 equally well", "better": "tie"}
            else:
                verdict = {"reason": f"answer {'A' if a > b else 'B'} follows principle 1 more closely",
                           "better": "A" if a > b else "B"}
        return [json.dumps(verdict)] * int(body.get("n", 1))

    return turn
