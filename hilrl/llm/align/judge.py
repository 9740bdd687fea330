"""AI feedback: an LLM judge given a short list of written principles labels pairs of the policy's own samples.

The judge follows the constitutional recipe of RLAIF (Bai et al. 2022, "Constitutional AI: Harmlessness
from AI Feedback": a model compares two answers against written principles) and SELF-ALIGN's short list of
principles (Sun et al. 2023, "Principle-Driven Self-Alignment of Language Models from Scratch with Minimal
Human Supervision"). It asks through our :class:`~hilrl.llm.providers.LLM` (any OpenAI-compatible server,
a local model, a replayed log) for ``{"reason", "better"}`` JSON, validated with pydantic. With ``swap`` it
asks again with the answers in the other order and calls a pair ``equal`` when the two verdicts disagree
(position bias; Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", who count only a
verdict that survives the swap). The system prompt shows the verdict's form with placeholders, never a concrete
verdict: Qwen2.5-Coder-1.5B copied an example verdict word for word.

With ``checks`` (the default) the judge first asks the LLM, once per prompt, to split the prompt's instructions
into the requirements a program can check (words, letter case, punctuation, format), each with a Python expression
on the answer's text (:class:`CheckList`, grammar-constrained JSON); :func:`check_program_code` makes them one
``score(answer)``, the share of checks passed, run in the reward code's :class:`~hilrl.llm.sandbox.Sandbox`. Both
answers are scored by the same program, so their order cannot matter; a pair the program separates is labelled by
it, and only a tie (or no usable check) goes to the verdict. This follows AutoIF (Dong et al. 2024, "Self-play with
Execution Feedback: Improving Instruction-Following Capabilities of Large Language Models"), where an LLM writes
verification functions for instructions and responses are checked by executing them. It suits a small code model:
on the rule task Qwen2.5-Coder-1.5B's own A/B preference was at chance in both orders (P(A) about 0.65 whatever
the answers), while the checks it writes separate the answers (``benchmarks/llm_local.py judge``; docs/LLM.md).

Labels and the judge's reasons go into the same preference store as people's labels, marked ``ai``
(:func:`label_pairs`). :func:`scripted_rule_judge` is an offline stand-in for tests and the README: a
``turn(request_body)`` for :class:`~hilrl.llm.scripted_server.ScriptedServer` that reads the two answers out
of the judge's prompt and applies the rule task's check, so the whole path (prompt, HTTP, SDK, JSON
validation, store) runs with no model behind it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, field_validator

from hilrl.errors import HilrlError
from hilrl.llm.align.task import prompt_text, rule_score

__all__ = ["AIJudge", "CheckList", "DEFAULT_PRINCIPLES", "Labeller", "Verdict", "check_program_code", "label_pairs",
           "scripted_rule_judge"]

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
CHECKS_TEMPERATURE = 0.8  # the check lists after the first are sampled, so they differ
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


class Requirement(BaseModel):
    """One requirement of a prompt on the answer's text and a Python expression on ``text`` checking it."""

    requirement: str
    check: str


class CheckList(BaseModel):
    """The requirements a program can check, ``{"requirements": [{"requirement", "check"}, ...]}``."""

    requirements: list[Requirement]


def check_program_code(listed: CheckList) -> tuple[str | None, list[str]]:
    """``def score(answer)``: the share of the listed checks ``answer.strip()`` passes (a check that raises fails),
    and the expressions left out because they do not parse; None when none is left."""
    lines, dropped, count = [], [], 0
    for item in listed.requirements:
        expression = " ".join(item.check.split())
        try:
            ast.parse(expression, mode="eval")
        except SyntaxError:
            dropped.append(expression)
            continue
        note = " ".join(item.requirement.split())
        lines += ["    try:", f"        passed += bool({expression})  # {note}", "    except Exception:",
                  "        pass"]
        count += 1
    if not count:
        return None, dropped
    return "\n".join(["def score(answer):", "    text = answer.strip()", "    passed = 0", *lines,
                      f"    return passed / {count}", ""]), dropped


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
    :param checks: first score both answers with check programs the LLM writes per prompt (module docstring);
        the verdict decides only what the checks leave tied.
    :param check_lists: how many check lists to ask for per prompt (the first at ``temperature``, the others
        sampled at 0.8); an answer's score is its mean over them, so one list that misses a requirement is made
        up for by another (self-consistency, Wang et al. 2023).
    """

    who = "ai"

    def __init__(self, llm: Any, principles: Sequence[str] = DEFAULT_PRINCIPLES, swap: bool = True,
                 temperature: float = 0.0, checks: bool = True, check_lists: int = 3) -> None:
        self.llm, self.principles, self.swap, self.temperature = llm, list(principles), swap, temperature
        self.checks, self.check_lists = checks, check_lists
        listed = "\n".join(f"{i}. {p}" for i, p in enumerate(self.principles, 1))
        self.system = (PROMPTS / "align_judge_system.txt").read_text().format(principles=listed)
        self.user = (PROMPTS / "align_judge_user.txt").read_text()
        self.checks_system = (PROMPTS / "align_judge_checks.txt").read_text().format(principles=listed)
        self._programs: dict[str, tuple[list[str], str]] = {}  # prompt text -> (check programs, problems)

    def messages(self, prompt: Any, a: str, b: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.format(prompt=prompt_text(prompt), a=a, b=b)}]

    def _verdict(self, prompt: Any, a: str, b: str) -> Verdict:
        return self.llm.chat_json(self.messages(prompt, a, b), Verdict, temperature=self.temperature,
                                  purpose="align-judge")

    def check_programs(self, prompt: Any) -> tuple[list[str], str]:
        """The check programs for ``prompt`` (asked once per prompt text: ``check_lists`` lists of requirements, each
        with a Python expression, made into ``score(answer)`` by :func:`check_program_code`), and what was left
        out or refused."""
        text = prompt_text(prompt)
        if text not in self._programs:
            from hilrl.llm.sandbox import CodeError, check_code

            messages = [{"role": "system", "content": self.checks_system},
                        {"role": "user", "content": f"Prompt:\n<<<PROMPT\n{text}\nPROMPT>>>\n\n"
                                                    "List the requirements and their checks."}]
            codes, problems = [], []
            for k in range(self.check_lists):  # the first at the judge's temperature, then sampled ones
                try:
                    listed = self.llm.chat_json(messages, CheckList, purpose="align-judge-checks",
                                                temperature=self.temperature if k == 0 else CHECKS_TEMPERATURE)
                except HilrlError as exc:  # no valid list after the retries
                    problems.append(f"no check list: {exc}")
                    continue
                code, dropped = check_program_code(listed)
                problems += [f"left out, not an expression: {d}" for d in dropped]
                if code is None:
                    continue
                try:
                    check_code(code, "score", ("answer",))
                    codes.append(code)
                except CodeError as exc:
                    problems.append(f"check program refused: {exc}")
            problems = list(dict.fromkeys(problems))  # each once, however many lists repeat it
            self._programs[text] = (codes, "; ".join(problems) or ("" if codes else "no checkable requirement"))
        return self._programs[text]

    def _scores(self, prompt: Any, first: str, second: str) -> tuple[tuple[float, float] | None, str]:
        """Both answers' mean score over the prompt's check programs that run (None when none does)."""
        codes, why = self.check_programs(prompt)
        from hilrl.llm.sandbox import Sandbox, SandboxError

        scores = []
        for code in codes:
            try:
                with Sandbox(code, function="score", arguments=("answer",)) as sandbox:
                    scores.append(sandbox.score_texts([first, second]))
            except SandboxError as exc:
                why = f"{why}; check program failed: {exc.message.splitlines()[-1]}".strip("; ")
        if not scores:
            return None, why or "no check program"
        a, b = (float(sum(x[i] for x in scores) / len(scores)) for i in (0, 1))
        return (a, b), why

    def compare(self, prompt: Any, first: str, second: str) -> tuple[str, str]:
        if self.checks:
            scores, why = self._scores(prompt, first, second)
            if scores is not None and abs(scores[0] - scores[1]) > 1e-9:
                a, b = scores
                return ("first" if a > b else "second"), f"checks: first scores {a:.2f}, second {b:.2f}"
            label, reason = self._compare_verdicts(prompt, first, second)
            tied = (f"checks tied ({scores[0]:.2f})" + (f", {why}" if why else "")) if scores is not None else why
            return label, f"{tied}; verdict: {reason}"
        return self._compare_verdicts(prompt, first, second)

    def _compare_verdicts(self, prompt: Any, first: str, second: str) -> tuple[str, str]:
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


def scripted_rule_judge(score: Callable[[str], float] = rule_score,
                        checks: Sequence[tuple[str, str]] = ()) -> Callable[[dict], list[str]]:
    """A ``turn(request_body)`` answering judge requests by ``score`` (higher wins; module docstring), and the
    request for a check list with ``checks``, ``(requirement, expression)`` pairs (none: every pair goes to the
    verdict)."""

    def turn(body: dict) -> list[str]:
        if body["messages"][0]["content"].startswith("You write checks"):
            listed = {"requirements": [{"requirement": r, "check": c} for r, c in checks]}
            return [json.dumps(listed)] * int(body.get("n", 1))
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
