"""A tiny OpenAI-compatible fake for the compare runner's tests (no model, no Redis).

`fake_openai` serves GET /v1/models and streamed POST /v1/chat/completions on 127.0.0.1:
    fast, slow   answer via `answers[model](messages)`, send `timings` on the finish chunk
    foreign      sends no `timings` (a foreign server): the client's clock must stand in
    broken       400 invalid_request_error for every chat request
    embedder     listed as an embedding model: left out of the default model list
A request without `stream` gets one whole chat.completion (usage: 11 prompt tokens, one completion
token a word): that is how the judge is asked, and a test lists a judge model by adding it to `listed`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Answer = Callable[[list[dict[str, Any]]], str]
LISTED = [
    {"id": "fast", "object": "model", "owned_by": "slm-server"},
    {"id": "slow", "object": "model", "owned_by": "slm-server"},
    {"id": "foreign", "object": "model", "owned_by": "elsewhere"},
    {"id": "broken", "object": "model", "owned_by": "slm-server"},
    {"id": "embedder", "object": "model", "owned_by": "slm-server", "type": "embedding"},
]
PROMPT_MS = {"fast": 20.0, "slow": 200.0}
PREDICTED_MS = {"fast": 30.0, "slow": 300.0}


@dataclass
class FakeOpenAI:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    listed: list[dict[str, Any]] = field(default_factory=lambda: list(LISTED))

    def answer(self, model: str, messages: list[dict[str, Any]]) -> str:
        answer = self.answers.get(model)
        return answer(messages) if answer is not None else "B"


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": fake.listed})
            else:
                self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            model = body["model"]
            if model == "broken":
                error = {"message": "this model cannot chat", "type": "invalid_request_error", "code": None}
                self._json(400, {"error": error})
                return
            text = fake.answer(model, body["messages"])
            if not body.get("stream"):
                message = {"role": "assistant", "content": text}
                usage = {"prompt_tokens": 11, "completion_tokens": len(text.split()),
                         "total_tokens": 11 + len(text.split())}  # fmt: skip
                self._json(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage,
                })  # fmt: skip
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("x-slm-model", model)
            self.end_headers()
            base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}

            def send(chunk: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps({**base, **chunk}).encode() + b"\n\n")
                self.wfile.flush()

            send({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
            for piece in pieces:
                time.sleep(0.002)
                send({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            final: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            if model in PROMPT_MS:
                prompt_ms, predicted_ms = PROMPT_MS[model], PREDICTED_MS[model]
                final["timings"] = {
                    "queue_ms": 1.5,
                    "prompt_n": 11,
                    "prompt_ms": prompt_ms,
                    "predicted_n": len(pieces),
                    "predicted_ms": predicted_ms,
                    "ttft_ms": prompt_ms + 1.5,
                    "total_ms": prompt_ms + predicted_ms,
                }
            send(final)
            usage = {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}
            send({"choices": [], "usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-openai", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
