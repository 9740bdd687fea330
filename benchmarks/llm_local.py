"""A real local LLM on the CPU (Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M) behind every LLM feature, measured.

Parts (``python benchmarks/llm_local.py PART ...``; ``all`` runs them in this order):

- ``speed``: tokens/s of prompt processing and of generation, llama.cpp (llama-cpp-python) vs transformers on
  the same GGUF file (transformers de-quantises it to fp32: only a short generation is measured);
- ``search``: ``hilrl reward-search eureka|icpl`` run as a user runs it (the CLI, an LLM YAML with
  ``provider: local``): execute rate per iteration, LLM time and tokens per iteration, and the best program's
  success after retraining vs the task's dense reward and the sparse reward (human-normalised score);
- ``droc``: corrections a scripted person gives per task in rounds 1 and 2, without and with the knowledge base,
  the planner being the local model (``benchmarks/corrections.py``'s set-up, its scripted LLM swapped out);
- ``judge``: the alignment judge (:class:`hilrl.llm.align.judge.AIJudge` as it comes: check lists the local model
  writes per prompt, a verdict in both orders on a tie; grammar-constrained JSON) against the rule verifier on the
  rule task's preference pairs: the share of pairs they label alike.

Goals (issue 28): generation >= 10 tokens/s; Eureka execute rate >= 0.6 from iteration 1; human-normalised
>= 0.8 on Reach, >= 0.5 on Push within 3 iterations of 4 samples; DROC round 2 <= 0.5 of round 1 with the
knowledge base; judge agreement >= 0.8.

Every figure row is also appended as JSON to ``--rows FILE`` when given. The model: ``make llm-model``
(``--model PATH`` for another .gguf); llama.cpp: ``make llm-local``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from machine import describe_machine  # noqa: E402

from hilrl.llm.local_model import installed_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS: Path | None = None


def emit(row: dict) -> None:
    """Print ``row`` and append it to ``--rows``."""
    print(json.dumps(row), flush=True)
    if ROWS is not None:
        ROWS.parent.mkdir(parents=True, exist_ok=True)
        with open(ROWS, "a") as f:
            f.write(json.dumps({"time": time.strftime("%H:%M:%S"), **row}) + "\n")


def speed_prompt() -> list[dict[str, str]]:
    """A code-writing request of about 700 tokens (a real source file as context)."""
    context = (ROOT / "hilrl" / "llm" / "reward_code.py").read_text()[:2600]
    return [{"role": "system", "content": "You are a careful Python programmer."},
            {"role": "user", "content": f"Here is a module:\n```python\n{context}\n```\nWrite a reward function "
             "`compute_reward(obs, action, next_obs)` for reaching a goal with a robot gripper: numpy, batched "
             "over rows, returning (reward, terms). Explain each term briefly."}]


def speed_llama_cpp(model: Path, threads: int, generate: int) -> dict:
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=str(model), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - started
    try:
        prompt = llm.tokenize(_chat_text(llm, speed_prompt()).encode(), add_bos=False, special=True)
        llm.reset()
        made, started, cpu_started = 0, time.perf_counter(), time.process_time()
        for token in llm.generate(prompt, temp=0.0):  # greedy; the first token comes after the prompt's evaluation
            made += 1
            if made == 1:
                first, cpu_first = time.perf_counter(), time.process_time()
            if made >= generate or token == llm.token_eos():
                break
        done, cpu_done = time.perf_counter(), time.process_time()
    finally:
        llm.close()
    # on a shared machine wall time mixes in other jobs; CPU time (all threads) is ours alone: with one thread,
    # tokens per CPU-second is the speed this process would have with a core to itself
    return {"backend": "llama.cpp", "load_s": round(load, 1), "prompt_tokens": len(prompt),
            "prompt_tok_s": round(len(prompt) / (first - started), 1), "generated": made,
            "generate_tok_s": round((made - 1) / (done - first), 2),
            "prompt_tok_per_cpu_s": round(len(prompt) / max(cpu_first - cpu_started, 1e-9), 1),
            "generate_tok_per_cpu_s": round((made - 1) / max(cpu_done - cpu_first, 1e-9), 2)}


def _chat_text(llm, messages: list[dict[str, str]]) -> str:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llm.metadata["tokenizer.chat_template"]
    formatter = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="")
    return formatter(messages=messages).prompt


def speed_transformers(model: Path, threads: int, generate: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    lm = AutoModelForCausalLM.from_pretrained(str(model.parent), gguf_file=model.name).eval()
    load = time.perf_counter() - started
    inputs = tokenizer.apply_chat_template(speed_prompt(), add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        started = time.perf_counter()
        out = lm(**inputs, use_cache=True)
        prompt_s = time.perf_counter() - started
        past, token, made = out.past_key_values, out.logits[:, -1:].argmax(-1), 0
        mask = inputs["attention_mask"]
        started = time.perf_counter()
        while made < generate:  # greedy, one token at a time on the KV cache: generation alone is timed
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            out = lm(input_ids=token, attention_mask=mask, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            made += 1
        generate_s = time.perf_counter() - started
    return {"backend": "transformers (fp32 from the GGUF)", "load_s": round(load, 1), "prompt_tokens": prompt_len,
            "prompt_tok_s": round(prompt_len / prompt_s, 1), "generated": made,
            "generate_tok_s": round(made / generate_s, 2)}


def part_speed(args) -> None:
    for backend in args.backends.split(","):
        fn = speed_llama_cpp if backend == "llama.cpp" else speed_transformers
        generate = args.generate if backend == "llama.cpp" else args.generate_transformers
        row = fn(args.model, args.threads, generate)
        emit({"part": "speed", "threads": args.threads, **row,
              "goal_generate_10_tok_s": "met" if row["generate_tok_s"] >= 10 else "MISSED"})


def llm_yaml(args, folder: Path) -> Path:
    import yaml

    path = folder / "llm.yaml"
    # the threads measured with (the speed part's --threads), written down so every part's figure names them
    path.write_text(yaml.safe_dump({"provider": "local", "path": str(args.model), "temperature": args.temperature,
                                    "max_tokens": args.max_tokens, "threads": args.threads}))
    return path


def demo_base(folder: Path, task: str) -> Path:
    """``make demo-llm``'s candidate experiment (:data:`hilrl.apps.llm_demo.DEMO_BASE`) as a --base YAML."""
    import yaml

    from hilrl.apps.llm_demo import DEMO_BASE

    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump({**DEMO_BASE, "env": {"id": task}}))
    return path


def part_search(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="llm-local-"))
    config = llm_yaml(args, folder)
    for task in args.tasks.split(","):
        out = Path(args.out) / f"{args.method}_{task.replace('/', '_')}_seed{args.seed}"
        command = [str(Path(sys.executable).parent / "hilrl"), "reward-search", args.method, "--task", task,
                   "--samples", str(args.samples), "--iterations", str(args.iterations), "--llm", str(config),
                   "--steps", str(args.steps), "--final-seeds", str(args.final_seeds), "--seed", str(args.seed),
                   "--out", str(out)]
        command += ["--final-steps", str(args.final_steps)] if args.final_steps else []
        if args.base:
            command += ["--base", str(demo_base(folder, task) if str(args.base) == "demo" else args.base)]
        print("$", shlex.join(command), flush=True)
        started = time.perf_counter()
        done = subprocess.run(command)
        wall = time.perf_counter() - started
        summary_file = out / "summary.json"
        if done.returncode != 0 or not summary_file.is_file():
            emit({"part": "search", "method": args.method, "task": task, "error": f"exit {done.returncode}",
                  "wall_s": round(wall)})
            continue
        report_search(args.method, task, args.seed, out, wall)


def report_search(method: str, task: str, seed: int, out: Path, wall: float | None = None) -> None:
    """Rows of a finished search folder: each iteration's execute rate, statuses, fitness and cost, then totals."""
    summary = json.loads((out / "summary.json").read_text())
    calls = [json.loads(line) for line in (out / "llm_calls.jsonl").read_text().splitlines()]
    answered = [c for c in calls if c.get("purpose") == "reward" and c.get("responses")]
    for i, iteration in enumerate(summary["iterations"]):
        emit({"part": "search", "method": method, "task": task, "seed": seed, "iteration": i,
              "execute_rate": iteration["execute_rate"], "statuses": iteration.get("statuses"),
              "fitness": iteration.get("fitness"), "cost_s": iteration.get("cost")})
    final = summary.get("final") or {}
    emit({"part": "search", "method": method, "task": task, "seed": seed,
          "execute_rate_mean": summary["execute_rate"], "llm_requests": len(answered),
          "prompt_tokens": sum(c.get("prompt_tokens", 0) for c in answered),
          "completion_tokens": sum(c.get("completion_tokens", 0) for c in answered),
          "llm_s": round(sum(c.get("latency_s", 0) for c in answered)), "final_seeds": final.get("seeds"),
          "success": {k: v["per_seed"] for k, v in final.get("scores", {}).items()} or None,
          "human_normalised": final.get("human_normalised"), "wall_s": None if wall is None else round(wall),
          "out": str(out)})


def part_droc(args) -> None:
    import tempfile as tf

    from corrections import TASKS, cell

    from hilrl.apps.correction_sessions import CorrectionSession, ScriptedPerson, make_session_env
    from hilrl.envs.tasks.variants import variant
    from hilrl.llm.droc.knowledge import KnowledgeBase
    from hilrl.llm.droc.planner import DrocPlanner
    from hilrl.llm.droc.retrieval import MiniLM
    from hilrl.llm.providers import load_llm_config, make_llm

    folder = Path(tempfile.mkdtemp(prefix="llm-local-droc-"))
    config = load_llm_config(llm_yaml(args, folder)).model_copy(update={"temperature": 0.0})
    encoder = MiniLM()
    llm = make_llm(config, Path(args.out) / "droc_llm_calls.jsonl")
    tasks = args.droc_only.split(",") if args.droc_only else TASKS[:args.droc_tasks]
    try:
        for label, retrieval in (("no KB", None), ("KB, text", "text")):
            kb = KnowledgeBase(tf.mkdtemp(prefix="kb-")) if retrieval else None
            counts: dict[int, list] = {1: [], 2: []}
            started = time.perf_counter()
            for round_ in (1, 2):
                for index, name in enumerate(tasks):
                    task = variant(name)
                    env = make_session_env(task)
                    try:
                        session = CorrectionSession(env, DrocPlanner(llm), ScriptedPerson(), kb=kb,
                                                    retrieval=retrieval or "text", encoder=encoder)
                        try:
                            # --seed N: another sequence, its scenes 1000 N apart (as corrections.py's --seeds)
                            outcome = session.run(task, seed=1000 * args.seed + 100 * round_ + index)
                            got = len(outcome.corrections) if outcome.success else None
                        except Exception as exc:  # noqa: BLE001 - an LLM that never gives a valid plan: a failed task
                            print(f"{label} round {round_} {name}: {type(exc).__name__}: {exc}", flush=True)
                            got = None
                    finally:
                        env.close()
                    counts[round_].append(got)
                    emit({"part": "droc", "setup": label, "round": round_, "task": name, "corrections": got})
            r1, r2 = (sum(v or 0 for v in counts[r]) for r in (1, 2))
            emit({"part": "droc", "setup": label, "seed": args.seed, "tasks": list(tasks), "round1": cell(counts[1]),
                  "round2": cell(counts[2]), "r2_over_r1": round(r2 / r1, 2) if r1 else None,
                  "wall_s": round(time.perf_counter() - started)})
    finally:
        llm.close()


def part_judge(args) -> None:
    from hilrl.llm.align.judge import AIJudge
    from hilrl.llm.align.task import RuleTask, RuleVerifier
    from hilrl.llm.providers import load_llm_config, make_llm

    folder = Path(tempfile.mkdtemp(prefix="llm-local-judge-"))
    config = load_llm_config(llm_yaml(args, folder)).model_copy(update={"max_tokens": 200})
    rows = RuleTask(seed=args.seed, conversational=True).pairs()
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    rows = rows[:args.pairs]
    llm = make_llm(config, Path(args.out) / "judge_llm_calls.jsonl")
    judge, verifier = AIJudge(llm), RuleVerifier()
    agree, labels, started = 0, [], time.perf_counter()
    try:
        for i, row in enumerate(rows):
            first, second = (row["chosen"], row["rejected"]) if rng.random() < 0.5 else (row["rejected"], row["chosen"])
            first, second = (_text(first), _text(second))
            truth, _ = verifier.compare(row["prompt"], first, second)
            said, reason = judge.compare(row["prompt"], first, second)
            agree += said == truth
            labels.append(said)
            print(f"pair {i}: verifier {truth}, judge {said} ({reason[:80]})", flush=True)
    finally:
        llm.close()
    share = agree / len(rows)
    emit({"part": "judge", "pairs": len(rows), "seed": args.seed, "agreement": round(share, 3),
          "judge_equal": labels.count("equal"), "wall_s": round(time.perf_counter() - started),
          "goal_0_8": "met" if share >= 0.8 else "MISSED"})


def _text(answer) -> str:
    if isinstance(answer, list):  # conversational rows: [{"role": "assistant", "content": ...}]
        return answer[-1]["content"]
    return str(answer)


def main() -> None:
    global ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("speed", "search", "droc", "judge", "all"))
    parser.add_argument("--model", type=Path, default=installed_model(), help="the .gguf (default: make llm-model's)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="llama.cpp's CPU threads in every part (default half the logical CPUs, for a shared "
                             "machine; the provider's own default is hilrl.llm.providers.default_threads())")
    parser.add_argument("--backends", default="llama.cpp,transformers", help="speed: which backends, comma-separated")
    parser.add_argument("--generate", type=int, default=128, help="speed: tokens generated by llama.cpp")
    parser.add_argument("--generate-transformers", type=int, default=16, help="speed: tokens by transformers")
    parser.add_argument("--method", default="eureka", choices=("eureka", "icpl"))
    parser.add_argument("--tasks", default="hilrl/Reach-v0", help="search: comma-separated task ids")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--final-seeds", type=int, default=3)
    parser.add_argument("--final-steps", type=int, default=None, help="search: env steps of each retraining "
                        "(default --steps)")
    parser.add_argument("--base", type=Path, default=None, help="search: the experiment each candidate trains with "
                        "(reward-search --base), or 'demo': make demo-llm's (RLPD as reach_sac.yaml, 10 demos, 20 "
                        "evaluation episodes; the dense reward learns Reach within 2000 steps); default reward-search's "
                        "small SAC (on Reach the dense reward gives 0%% at 1500 steps: no human-normalised score)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--droc-tasks", type=int, default=5, help="droc: the first N of corrections.py's tasks")
    parser.add_argument("--droc-only", default=None, help="droc: these of corrections.py's tasks (comma-separated)")
    parser.add_argument("--pairs", type=int, default=24, help="judge: preference pairs judged")
    parser.add_argument("--out", default="runs/bench_llm_local")
    parser.add_argument("--rows", type=Path, default=None, help="append each row as JSON to this file")
    args = parser.parse_args()
    ROWS = args.rows
    if args.model is None or not Path(args.model).is_file():
        raise SystemExit("no model: run `make llm-model` (or pass --model PATH.gguf)")
    print(f"$ python benchmarks/llm_local.py {shlex.join(sys.argv[1:])}")
    print(describe_machine(f"model {Path(args.model).name}", f"threads {args.threads}"), flush=True)
    parts = ("speed", "search", "droc", "judge") if args.part == "all" else (args.part,)
    for part in parts:
        {"speed": part_speed, "search": part_search, "droc": part_droc, "judge": part_judge}[part](args)


if __name__ == "__main__":
    main()
