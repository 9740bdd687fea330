"""The iterative loop: sample from the current policy, label, train with DPO, repeat.

Each round samples answers of the current policy to the training prompts, pairs them, has them labelled
(an AI judge, a programmatic verifier, or people on the labelling page), all into the run's preference
store, and trains the policy with DPO on that round's decisive pairs, the previous policy as reference,
as iterative / self-rewarding DPO does (Yuan et al. 2024, "Self-Rewarding Language Models"; Xiong et al.
2024, "Iterative Preference Learning from Human Feedback"). After training, the same labeller compares
the new policy's answer with the previous policy's on held-out prompts: the round's win rate (a tie
counts half). ``OUT/rounds.jsonl`` gets one line per round as it ends; ``OUT/model`` the last policy.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError
from hilrl.llm.align.dpo import DPOSettings

__all__ = ["IterateSettings", "PageLabelling", "RoundResult", "iterate"]


@dataclass
class IterateSettings:
    """The loop's sizes.

    Args:
        rounds: sample-label-train rounds.
        prompts: training prompts sampled per round.
        samples: answers per prompt (paired 1-2, 3-4, ...).
        eval_prompts: held-out prompts for the win rate.
        max_new_tokens: most tokens of a sampled answer.
        temperature: sampling temperature of the policy.
        dpo: the DPO training of each round.
        seed: sampling seeds (round r uses ``seed + r``).
    """

    rounds: int = 2
    prompts: int = 16
    samples: int = 4
    eval_prompts: int = 12
    max_new_tokens: int = 10
    temperature: float = 1.0
    dpo: DPOSettings = field(default_factory=DPOSettings)
    seed: int = 0

    def check(self) -> IterateSettings:
        if self.rounds < 1 or self.prompts < 1 or self.eval_prompts < 1:
            raise HilrlError("iterate: rounds, prompts and eval prompts must each be >= 1")
        if self.samples < 2 or self.samples % 2:
            raise HilrlError(f"--samples {self.samples}: answers are paired, give an even number >= 2")
        self.dpo.check()
        return self


@dataclass
class RoundResult:
    """One round: how many pairs were labelled and decisive, how training went, the win rate."""

    round: int
    pairs: int
    decisive: int
    steps: int
    win_rate: float
    wins: int
    ties: int
    losses: int
    rule_satisfaction: float | None
    wall_s: float


class PageLabelling:
    """People label the round's pairs on the labelling page (``hilrl label OUT``): the loop waits for them.

    :param timeout_s: how long to wait for the round's labels before stopping with an error.
    :param poll_s: how often to look at the store.
    """

    who = "person"

    def __init__(self, timeout_s: float = 3600.0, poll_s: float = 2.0, notify: Callable[[str], None] = print) -> None:
        self.timeout_s, self.poll_s, self.notify = timeout_s, poll_s, notify

    def wait(self, store: Any, queries: Sequence[str]) -> None:
        wanted = set(queries)
        self.notify(f"{len(wanted)} text pairs wait on the labelling page: hilrl label {store.folder.parent}")
        deadline = time.monotonic() + self.timeout_s
        while wanted - set(store.labels()):
            if time.monotonic() > deadline:
                left = len(wanted - set(store.labels()))
                raise HilrlError(f"{left} of {len(wanted)} pairs still unlabelled after {self.timeout_s:.0f} s; label "
                                 f"them with `hilrl label {store.folder.parent}` and run again")
            time.sleep(self.poll_s)


def _pairs(prompts: Sequence[Any], answers: Sequence[Sequence[str]]) -> list[tuple[Any, str, str]]:
    return [(p, a[i], a[i + 1]) for p, a in zip(prompts, answers, strict=True) for i in range(0, len(a) - 1, 2)
            if a[i] != a[i + 1]]


def _plain(model: Any) -> Any:
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def win_rate(labeller: Any, prompts: Sequence[Any], new: Sequence[str], old: Sequence[str],
             store: Any = None, meta: dict[str, Any] | None = None) -> tuple[float, int, int, int]:
    """``(win rate, wins, ties, losses)`` of ``new`` answers over ``old`` ones, as ``labeller`` judges them
    (with :class:`PageLabelling`, people judge them on the page: the pairs go into ``store``)."""
    from hilrl.llm.align.data import add_text_query

    if isinstance(labeller, PageLabelling):
        queries = {i: add_text_query(store, p, [a, b], meta) for i, (p, a, b) in enumerate(zip(prompts, new, old))
                   if a != b}
        labeller.wait(store, list(queries.values()))
        done = store.labels()
        labels = [done[queries[i]].label if i in queries else "equal" for i in range(len(prompts))]
    else:
        labels = ["equal" if a == b else labeller.compare(p, a, b)[0] for p, a, b in zip(prompts, new, old, strict=True)]
    wins = sum(label == "first" for label in labels)
    ties = sum(label in ("equal", "skip") for label in labels)
    losses = len(prompts) - wins - ties
    return (wins + 0.5 * ties) / max(len(prompts), 1), wins, ties, losses


def iterate(model: Any, tokenizer: Any, task: Any, labeller: Any, store: Any, settings: IterateSettings,
            out: str | Path, check: Callable[[str], bool] | None = None, progress: Any = None,
            on_round: Callable[[RoundResult], None] | None = None) -> tuple[Any, list[RoundResult]]:
    """Run the loop (module docstring); returns the last policy and each round's result.

    :param task: has ``split()`` into training and held-out tasks with ``prompts(count)``
        (:class:`~hilrl.llm.align.task.RuleTask`).
    :param labeller: an :class:`~hilrl.llm.align.judge.AIJudge`, a verifier with ``compare``, or a
        :class:`PageLabelling`.
    :param store: the run's :class:`~hilrl.feedback.preferences.store.PreferenceStore`.
    :param check: when given, the held-out rule-satisfaction rate of each round's policy is measured.
    :param progress: a started rich ``Progress`` to show each round's DPO steps in; None: nothing shown.
    """
    from hilrl.llm.align.data import add_text_query, store_rows
    from hilrl.llm.align.dpo import train_dpo
    from hilrl.llm.align.judge import label_pairs
    from hilrl.llm.align.sampling import sample

    settings.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_task, eval_task = task.split()
    eval_prompts = eval_task.prompts(settings.eval_prompts)
    results = []
    for r in range(settings.rounds):
        started = time.perf_counter()
        seed = settings.seed + r
        every = train_task.prompts()
        prompts = [every[(r * settings.prompts + i) % len(every)] for i in range(settings.prompts)]
        answers = sample(model, tokenizer, prompts, settings.samples, settings.max_new_tokens, settings.temperature,
                         seed)
        pairs = _pairs(prompts, answers)
        if isinstance(labeller, PageLabelling):
            queries = [add_text_query(store, p, [a, b], {"round": r}) for p, a, b in pairs]
            labeller.wait(store, queries)
        else:
            queries = [q for q, _, _ in label_pairs(store, labeller, pairs, {"round": r})]
        rows = store_rows(store, only=queries)
        previous = copy.deepcopy(model)
        steps = 0
        if rows:
            dpo = copy.deepcopy(settings.dpo)
            dpo.seed = seed
            trained = train_dpo(model, tokenizer, rows, [], dpo, out / f"round_{r}", reference=previous,
                                progress=progress)
            model, steps = _plain(trained.model), trained.steps
        new = [a[0] for a in sample(model, tokenizer, eval_prompts, 1, settings.max_new_tokens,
                                    settings.temperature, 10_000 + seed)]
        old = [a[0] for a in sample(previous, tokenizer, eval_prompts, 1, settings.max_new_tokens,
                                    settings.temperature, 10_000 + seed)]
        rate, wins, ties, losses = win_rate(labeller, eval_prompts, new, old, store, {"round": r, "purpose": "win rate"})
        satisfied = sum(map(check, new)) / len(new) if check is not None else None
        result = RoundResult(r, len(pairs), len(rows), steps, rate, wins, ties, losses, satisfied,
                             time.perf_counter() - started)
        with open(out / "rounds.jsonl", "a") as f:
            f.write(json.dumps(asdict(result)) + "\n")
        results.append(result)
        if on_round is not None:
            on_round(result)
        del previous
    return model, results
