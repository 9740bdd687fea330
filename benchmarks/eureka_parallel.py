"""Eureka on this machine: candidate trainings in parallel, and a search over rewards of known quality.

1. Parallel candidates. Wall time of one Eureka iteration with K=4 valid reward programs (sampling from
   a scripted OpenAI-compatible server on loopback, sandbox checks, 4 SAC trainings of ``--steps`` env
   steps through the run core, reflections), by backend: ``serial`` (one process, the baseline),
   ``local`` (process pool, ``--workers``) and ``ray`` (a local Ray instance, ``--workers`` CPUs, startup
   included). Goal: local and Ray <= 0.6 of serial on 2 cores (an otherwise idle machine: on a machine
   whose cores other jobs keep busy, parallel workers cannot go faster than the CPU share they get). The candidates' results must be
   identical across backends (same seeds); the table says whether they were.
2. Search quality. The scripted server answers with four programs of known quality for Reach-v0
   (:data:`hilrl.apps.llm_demo.KNOWN_PROGRAMS`: good, shaped wrong, crashing, unparsable); one iteration of
   ``--quality-steps`` env steps per candidate, then the best reward is retrained with ``--seeds`` seeds
   beside the sparse reward and the task's own dense reward (the "human" reward). Goals: the good
   program is found, and its retrained success beats the sparse reward's; the human-normalised score
   (Method - Sparse) / |Human - Sparse| (clipped to [0, 3], Eureka's) is reported.

Run: ``nice -n 5 python benchmarks/eureka_parallel.py [--parts parallel,quality] [--steps 600]
[--quality-steps 2000] [--seeds 3] [--workers 2] [--out /tmp/eureka_bench]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
from machine import describe_machine  # noqa: E402

from hilrl.apps.llm_demo import DEMO_BASE, KNOWN_PROGRAMS, scripted_turn  # noqa: E402
from hilrl.llm.providers import LLMConfig, make_llm  # noqa: E402
from hilrl.llm.scripted_server import ScriptedServer  # noqa: E402
from hilrl.apps.reward_search import SearchSettings, reward_search  # noqa: E402

# four valid programs for the parallel part: the good one, two variants of it, and the shaped-wrong one
VARIANTS = [KNOWN_PROGRAMS["good"], KNOWN_PROGRAMS["shaped_wrong"],
            KNOWN_PROGRAMS["good"].replace("temperature = 0.1", "temperature = 0.05"),
            KNOWN_PROGRAMS["good"].replace("0.1 * closeness", "0.5 * closeness")]


def search(folder: Path, turn: list[str], settings: SearchSettings, backend: str, workers: int) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    with ScriptedServer([turn]) as server:
        llm = make_llm(LLMConfig(base_url=server.base_url, model="scripted"), folder / "llm_calls.jsonl")
        try:
            return reward_search(settings, llm, folder, backend=backend, workers=workers, show_progress=False)
        finally:
            llm.close()


def candidate_results(folder: Path) -> dict:
    out = {}
    for path in sorted(folder.glob("iter_*/sample_*/result.json")):
        result = json.loads(path.read_text())
        result.pop("seconds", None)
        out[path.parent.name] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="parallel,quality")
    parser.add_argument("--steps", type=int, default=600, help="env steps per candidate (parallel part)")
    parser.add_argument("--quality-steps", type=int, default=2000, help="env steps per candidate and retraining")
    parser.add_argument("--seeds", type=int, default=3, help="retraining seeds (quality part)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default="serial,local,ray")
    parser.add_argument("--out", default="/tmp/eureka_bench")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    out = Path(args.out)
    rows, notes = [], []

    if "quality" in parts:
        order = ("shaped_wrong", "crashing", "good", "unparsable")
        settings = SearchSettings("eureka", "hilrl/Reach-v0", samples=4, iterations=1, steps=args.quality_steps,
                                  final_seeds=args.seeds, base={**DEMO_BASE, "train": {**DEMO_BASE["train"],
                                                                                       "eval_episodes": 20}})
        started = time.perf_counter()
        summary = search(out / "quality", scripted_turn(order), settings, "local", args.workers)
        seconds = time.perf_counter() - started
        it = summary["iterations"][0]
        found = order[summary["best"]["sample"]] if summary["best"] else "none"
        scores = summary["final"]["scores"]
        norm = summary["final"]["human_normalised"]
        rows.append(("quality: program the search kept", found, "good", "", "good"))
        rows.append(("quality: execute rate", f"{it['execute_rate']:.2f}", "0.50 (2 of 4 run)", "", ""))
        fitness = ", ".join(f"{name} {f:.2f}" if f is not None and f > -1 else f"{name} {f}"
                            for name, f in zip(order, it["fitness"]))
        notes.append(f"quality: fitness (best validation success over training) {fitness}")
        best, sparse, human = (scores[k]["success_rate"] for k in ("best", "sparse", "human"))
        rows.append((f"quality: retrained success, {args.seeds} seeds x {args.quality_steps} steps (vs sparse)",
                     f"{best:.2f}", f"{sparse:.2f}", f"{best - sparse:+.2f}", "> sparse"))
        rows.append(("quality: task's dense ('human') reward, same seeds", f"{human:.2f}", "", "", ""))
        rows.append(("quality: human-normalised score (M-S)/|H-S|, clipped [0,3]",
                     "undefined (H = S)" if norm is None else f"{norm:.2f}", "", "", "report"))
        notes.append(f"quality: per seed best {scores['best']['per_seed']}, sparse {scores['sparse']['per_seed']}, "
                     f"human {scores['human']['per_seed']}; {seconds:.0f} s in all on the local pool")

    if "parallel" in parts:
        settings = SearchSettings("eureka", "hilrl/Reach-v0", samples=4, iterations=1, steps=args.steps,
                                  final_seeds=0, base=DEMO_BASE)
        walls, results = {}, {}
        for backend in args.backends.split(","):
            started = time.perf_counter()
            search(out / f"parallel_{backend}", VARIANTS, settings, backend, args.workers)
            walls[backend] = time.perf_counter() - started
            results[backend] = candidate_results(out / f"parallel_{backend}")
        serial = walls.get("serial")
        for backend, wall in walls.items():
            same = "" if backend == "serial" else (
                "results identical" if results[backend] == results["serial"] else "RESULTS DIFFER")
            rows.append((f"one iteration, K=4 x {args.steps} steps: {backend}"
                         + (f" ({args.workers} workers)" if backend != "serial" else ""), f"{wall:.1f} s",
                         f"{serial:.1f} s" if serial else "", f"{wall / serial:.2f} {same}" if serial else same,
                         "" if backend == "serial" else "<= 0.6"))
        notes.append("parallel: wall time of the whole iteration (LLM call, checks, trainings, reflections); "
                     "baseline = serial in this process; the Ray row includes starting and stopping Ray")

    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {describe_machine()}, load average at the end {os.getloadavg()[0]:.2f}")
    for note in notes:
        print(f"samples: {note}")
    header = ("measure", "ours", "baseline", "ratio / diff", "goal")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
