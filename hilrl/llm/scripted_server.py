"""A local HTTP server that speaks the OpenAI chat-completions protocol and answers from a script.

For tests, benchmarks and ``make demo-llm``: offline, deterministic, and parsed by the real ``openai``
SDK, so the provider is exercised exactly as against vLLM, Ollama or a llama.cpp server
(``POST {base_url}/chat/completions``, ``n`` choices, ``usage`` counts, HTTP errors).

A script is a list of turns, one per request, in order, or a callable ``turn(request_body)``.
A turn is a list of choice texts (``n`` of them, or fewer to mimic servers that ignore ``n``), or a
mapping: ``{"choices": [...]}``, ``{"status": 503, "error": "overloaded"}`` (an HTTP error), with an
optional ``"delay_s"``. Every request body received is kept in :attr:`ScriptedServer.requests`.

From a shell (``make demo-llm`` style): ``python -m hilrl.llm.scripted_server SCRIPT.json --port 8001``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["ScriptedServer", "load_script"]

Turn = Any  # list[str] | dict


def load_script(path: str | Path) -> list[Turn]:
    """A script from a JSON file (a list of turns) or a YAML file with the same shape."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a script is a list of turns (each a list of response texts), got "
                         f"{type(data).__name__}")
    return data


class ScriptedServer:
    """The server, in a daemon thread on ``127.0.0.1`` (``port=0``: any free port).

    Args:
        script: the turns (see the module docstring), or a callable from a request body to a turn.
        port: the TCP port; 0 picks a free one.
        model: the model name reported in responses.
    """

    def __init__(self, script: Sequence[Turn] | Callable[[dict], Turn], port: int = 0,
                 model: str = "scripted") -> None:
        self.script, self.model = script, model
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._turn = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                except ValueError:
                    return self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_request"}})
                status, payload = server._answer(body)
                self._send(status, payload)

            def _send(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-llm", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(body)
            if callable(self.script):
                turn = self.script(body)
            elif self._turn < len(self.script):
                turn = self.script[self._turn]
            else:
                return 500, {"error": {"message": f"the script has {len(self.script)} turns; request "
                                                  f"{self._turn + 1} has none", "type": "script_exhausted"}}
            self._turn += 1
        if isinstance(turn, dict):
            time.sleep(float(turn.get("delay_s", 0)))
            if "status" in turn:
                return int(turn["status"]), {"error": {"message": turn.get("error", "scripted error"),
                                                       "type": "scripted"}}
            texts = list(turn["choices"])
        else:
            texts = [turn] if isinstance(turn, str) else list(turn)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = sum(len(t.split()) for t in texts)
        return 200, {
            "id": f"chatcmpl-scripted-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        for i, text in enumerate(texts)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a script of chat-completion responses on 127.0.0.1.")
    parser.add_argument("script", help="JSON or YAML list of turns")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    with ScriptedServer(load_script(args.script), port=args.port) as server:
        print(f"scripted OpenAI-compatible server at {server.base_url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
