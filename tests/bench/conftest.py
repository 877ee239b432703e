"""A tiny OpenAI-compatible streaming fake for the load generator's tests (no model, no Redis).

`fake_server` serves streamed POST /v1/chat/completions on 127.0.0.1; the model name picks the behaviour:
    ok          `max_tokens` content chunks, then a usage chunk when `stream_options.include_usage` asks
    no-usage    the same, never a usage chunk (the client must count content chunks)
    flaky       every second request gets a 500 with an OpenAI error envelope
    midstream   one content chunk, then an error frame, then [DONE]
    truncated   one content chunk, then the connection closes without [DONE]
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class FakeServer:
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    chunk_delay_s: float = 0.002
    lock: threading.Lock = field(default_factory=threading.Lock)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        counted = False  # this request is in `fake.in_flight`

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, payload: dict[str, Any] | str) -> None:
            time.sleep(fake.chunk_delay_s)
            if payload == "[DONE]":
                self._leave()  # before the client can see the end and send its next request
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def _leave(self) -> None:
            with fake.lock:
                if self.counted:
                    fake.in_flight -= 1
                    self.counted = False

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.bodies.append(body)
                fake.auth.append(self.headers.get("Authorization"))
                number = len(fake.bodies)
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            self.counted = True
            try:
                self._answer(body, number)
            finally:
                self._leave()

        def _answer(self, body: dict[str, Any], number: int) -> None:
            model = body["model"]
            if model == "flaky" and number % 2 == 0:
                error = json.dumps({"error": {"message": "engine exploded", "type": "server_error"}}).encode()
                self._leave()
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self._send(_chunk(model, {"role": "assistant", "content": ""}))
            if model in ("midstream", "truncated"):
                self._send(_chunk(model, {"content": "partial"}))
                if model == "midstream":
                    self._send({"error": {"message": "worker lost", "type": "server_error"}})
                    self._send("[DONE]")
                else:
                    self._leave()
                return
            tokens = int(body["max_tokens"])
            for i in range(tokens):
                self._send(_chunk(model, {"content": f"t{i} "}))
            self._send(_chunk(model, {}, finish="length"))
            wants_usage = (body.get("stream_options") or {}).get("include_usage")
            if wants_usage and model != "no-usage":
                usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": tokens + 5}
                self._send({**_chunk(model, {}), "choices": [], "usage": usage})
            self._send("[DONE]")

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.daemon_threads = True
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              name="fake-openai", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
