"""Corrections a person must give per task, in two rounds, with and without the knowledge base (DROC).

A sequence of task variants (:mod:`hilrl.envs.tasks.variants`) is run twice (round 2 on other seeds: the
objects start elsewhere). A scripted person (:class:`hilrl.apps.correction_sessions.ScriptedPerson`) gives the
right correction for each failure it sees, from a table; the LLM is the rule-based DROC responder behind a
loopback OpenAI-compatible server (the real ``openai`` SDK over HTTP). Three set-ups:

- ``no KB``: nothing is kept between tasks;
- ``KB, text``: knowledge kept; skill entries chosen by text (MiniLM embeddings, then the LLM's pick);
- ``KB, text+visual``: the same, then the nearest object by the crop feature (:mod:`hilrl.envs.crops`).

The goal (issue 15): with the knowledge base, round-2 corrections <= 0.25 of round 1.

Run: ``python benchmarks/corrections.py [--seeds 1]`` (``--seeds N``: N sequences, seeds apart, summed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from hilrl.envs.tasks.variants import variant  # noqa: E402
from hilrl.llm.droc.knowledge import KnowledgeBase  # noqa: E402
from hilrl.llm.droc.planner import DrocPlanner  # noqa: E402
from hilrl.llm.droc.retrieval import MiniLM  # noqa: E402
from hilrl.llm.droc.scripted import scripted_llm  # noqa: E402
from hilrl.apps.correction_sessions import CorrectionSession, ScriptedPerson, make_session_env  # noqa: E402

TASKS = ("pick_cube", "pick_tall", "pick_taller", "peg_insert", "push_ice")
SETUPS = {"no KB": None, "KB, text": "text", "KB, text+visual": "text+visual"}


def run_setup(retrieval: str | None, seeds: int, encoder: MiniLM) -> dict[tuple[int, str], list[int]]:
    """Corrections per (round, task), one count per sequence; a failed task counts as None."""
    counts: dict[tuple[int, str], list] = {}
    for sequence in range(seeds):
        llm = scripted_llm()
        kb = KnowledgeBase(tempfile.mkdtemp(prefix="kb-")) if retrieval else None
        try:
            for round_ in (1, 2):
                for index, name in enumerate(TASKS):
                    task = variant(name)
                    env = make_session_env(task)
                    try:
                        session = CorrectionSession(env, DrocPlanner(llm), ScriptedPerson(), kb=kb,
                                                    retrieval=retrieval or "text", encoder=encoder)
                        outcome = session.run(task, seed=1000 * sequence + 100 * round_ + index)
                    finally:
                        env.close()
                    counts.setdefault((round_, name), []).append(len(outcome.corrections) if outcome.success else None)
        finally:
            llm.close()
    return counts


def cell(values: list) -> str:
    if any(v is None for v in values):
        return f"{sum(v for v in values if v is not None)} ({values.count(None)} failed)"
    return str(sum(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="sequences of tasks, each on its own seeds")
    args = parser.parse_args()
    encoder = MiniLM()
    started = time.perf_counter()
    results = {label: run_setup(retrieval, args.seeds, encoder) for label, retrieval in SETUPS.items()}
    wall = time.perf_counter() - started
    header = ["task", *[f"{label} R{r}" for label in SETUPS for r in (1, 2)]]
    rows = [[name, *[cell(results[label][(r, name)]) for label in SETUPS for r in (1, 2)]] for name in TASKS]
    totals = {label: {r: sum(v or 0 for name in TASKS for v in results[label][(r, name)]) for r in (1, 2)}
              for label in SETUPS}
    rows.append(["total", *[str(totals[label][r]) for label in SETUPS for r in (1, 2)]])
    rows.append(["tasks failed", *[str(sum(v is None for name in TASKS for v in results[label][(r, name)]))
                                   for label in SETUPS for r in (1, 2)]])
    rows.append(["R2 / R1", *[x for label in SETUPS for x in (
        "", f"{totals[label][2] / totals[label][1]:.2f}" if totals[label][1] else "-")]])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"$ python benchmarks/corrections.py {shlex.join(sys.argv[1:])}".rstrip())
    print(describe_machine(f"{args.seeds} sequence(s) of {len(TASKS)} tasks x 2 rounds per set-up; "
                           f"wall {wall:.0f} s"))
    print("corrections a scripted person gave until each task succeeded (R1: round 1, R2: round 2 on new seeds); "
          "'failed': the task was not done (the person had no correction for what they saw)")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)))
    for label in SETUPS:
        if label != "no KB" and totals[label][1]:
            ratio = totals[label][2] / totals[label][1]
            print(f"{label}: round 2 / round 1 = {ratio:.2f} (goal <= 0.25: {'met' if ratio <= 0.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
