"""Sampling answers from a policy and scoring preference rows by its likelihood (evaluation, not training).

A conversational prompt goes through the tokenizer's chat template with the generation prompt, as
TRL's trainers format it (huggingface/trl, ``maybe_apply_chat_template``), so what is sampled and what
is trained see the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["completion_logps", "likelihood_accuracy", "preference_accuracy", "render_prompt", "sample"]


def render_prompt(tokenizer: Any, prompt: Any) -> str:
    """The text the model continues: a string as it is, messages through the chat template."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _completion_text(tokenizer: Any, prompt: Any, completion: Any) -> tuple[str, str]:
    """``(prompt text, prompt + completion text)`` as a trainer tokenises them."""
    if isinstance(prompt, str):
        return prompt, prompt + completion + (tokenizer.eos_token or "")
    head = render_prompt(tokenizer, prompt)
    return head, tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)


def sample(model: Any, tokenizer: Any, prompts: Sequence[Any], n: int = 1, max_new_tokens: int = 12,
           temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> list[list[str]]:
    """``n`` sampled answers per prompt (``temperature`` 0: greedy), special tokens stripped."""
    import torch

    torch.manual_seed(seed)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[list[str]] = []
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_return_sequences=n,
                                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                        **sampling)
            width = inputs["input_ids"].shape[1]
            decoded = [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]
            answers.extend(decoded[i * n:(i + 1) * n] for i in range(len(texts)))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def completion_logps(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """Summed log-probability of each row's ``key`` completion (``chosen`` or ``rejected``) given its prompt."""
    import torch

    out = []
    model.eval()
    with torch.no_grad():
        for row in rows:
            head, full = _completion_text(tokenizer, row["prompt"], row[key])
            prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
            out.append(float(logp[len(prompt_ids) - 1:].sum()))
    return np.asarray(out)


def preference_accuracy(margin: Any) -> tuple[float, float]:
    """``(accuracy, mean margin)`` of per-pair margins (chosen minus rejected): the share above 0, a tie counting
    half."""
    margin = np.asarray(margin, dtype=float)
    return float(np.mean(margin > 0) + 0.5 * np.mean(margin == 0)), float(np.mean(margin))


def likelihood_accuracy(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]],
                        reference: Any = None) -> tuple[float, float]:
    """``(accuracy, mean margin)`` of the policy's preference on ``rows``: the margin of a row is
    ``log π(chosen) − log π(rejected)``, minus the same for ``reference`` when given (DPO's implicit reward
    over β, Rafailov et al. 2023); a tie counts half."""
    margin = completion_logps(model, tokenizer, rows, "chosen") - completion_logps(model, tokenizer, rows, "rejected")
    if reference is not None:
        margin -= (completion_logps(reference, tokenizer, rows, "chosen")
                   - completion_logps(reference, tokenizer, rows, "rejected"))
    return preference_accuracy(margin)
