"""A small OpenAI-compatible upstream on 127.0.0.1, in a thread, told per request how to answer.

`FakeUpstream.script(*replies)` queues what the next requests get, in order; once the script is
used up every request gets `default`. Each reply is one of:

    Reply.ok(text)                  a normal answer (whole or streamed, as the request asks)
    Reply.error(status, ...)        an OpenAI error envelope with that status (and headers)
    Reply.hang()                    accept the request, then say nothing until `release()`
    Reply.hold(text)                count the request as in flight, answer after `release()`
    Reply.drop_mid_stream(text)     stream a few chunks, then cut the connection (broken chunking)
    Reply.truncate(text)            stream a few chunks, then close "cleanly" (no finish, no [DONE])

Every request is recorded (path, headers, JSON body) so tests can check what reached the upstream.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Reply:
    kind: str
    text: str = "Hello from the fake upstream"
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)  # the error envelope's content
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"

    @classmethod
    def ok(cls, text: str = "Hello from the fake upstream", *, finish_reason: str = "stop") -> Reply:
        return cls("ok", text=text, finish_reason=finish_reason)

    @classmethod
    def error(cls, status: int, message: str = "upstream failure", *, code: str | None = None,
              type: str = "server_error", param: str | None = None, headers: dict[str, str] | None = None) -> Reply:
        body = {"message": message, "type": type, "param": param, "code": code}
        return cls("error", status=status, body=body, headers=headers or {})

    @classmethod
    def hang(cls) -> Reply:
        return cls("hang")

    @classmethod
    def hold(cls, text: str = "held answer") -> Reply:
        return cls("hold", text=text)

    @classmethod
    def drop_mid_stream(cls, text: str = "one two three four five six") -> Reply:
        return cls("drop", text=text)

    @classmethod
    def truncate(cls, text: str = "one two three four five six") -> Reply:
        return cls("truncate", text=text)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeUpstream:
    def __init__(self, port: int = 0) -> None:
        """`port`: 0 for a free one; a given port lets a test stop an upstream and start it again there."""
        self.default = Reply.ok()
        self.requests: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-upstream", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def release(self) -> None:
        """Let every `hang` / `hold` reply (now and later) go on."""
        self._release.set()

    def next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def enter(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def wait_released(self) -> None:
        self._release.wait(timeout=30)

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _handler_for(fake: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            fake.enter(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            try:
                self._answer(fake.next_reply(), body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                fake.leave()

        # -- answers ----------------------------------------------------------------------------
        def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
            if reply.kind in ("hang", "hold"):
                fake.wait_released()
                if reply.kind == "hang":
                    self.close_connection = True
                    return
            if reply.kind == "error":
                self._json(reply.status, {"error": reply.body}, reply.headers)
                return
            chat = self.path.endswith("/chat/completions")
            if not body.get("stream"):
                self._json(200, self._whole(reply, body, chat), {})
                return
            self._stream(reply, body, chat)

        def _usage(self, reply: Reply, body: dict[str, Any]) -> dict[str, int]:
            prompt = json.dumps(body.get("messages") or body.get("prompt"))
            p, c = max(1, len(prompt) // 4), len(_words(reply.text))
            return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

        def _whole(self, reply: Reply, body: dict[str, Any], chat: bool) -> dict[str, Any]:
            if chat:
                choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": reply.text},
                                          "logprobs": None, "finish_reason": reply.finish_reason}
            else:
                choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
            return {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model", "fake-model"), "choices": [choice],
                    "usage": self._usage(reply, body)}

        def _chunk(self, body: dict[str, Any], chat: bool, text: str | None, finish: str | None,
                   role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model", "fake-model"), "choices": [choice]}

        def _stream(self, reply: Reply, body: dict[str, Any], chat: bool) -> None:
            clean_close = reply.kind == "truncate"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if clean_close:
                self.send_header("Connection", "close")  # body ends when the socket does
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(payload: dict[str, Any] | str) -> None:
                data = ("data: " + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n\n").encode()
                if clean_close:
                    self.wfile.write(data)
                else:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            words = _words(reply.text)
            if chat:
                send(self._chunk(body, chat, "", None, role=True))
            for i, word in enumerate(words):
                if reply.kind in ("drop", "truncate") and i == 2:
                    self._cut()
                    return
                send(self._chunk(body, chat, word, None))
            send(self._chunk(body, chat, None if chat else "", reply.finish_reason))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage_chunk = self._chunk(body, chat, None, None)
                usage_chunk["choices"] = []
                usage_chunk["usage"] = self._usage(reply, body)
                send(usage_chunk)
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

        def _cut(self) -> None:
            self.wfile.flush()
            self.close_connection = True
            # chunked: the body never ends properly (a protocol error for the client);
            # Connection: close: the body simply ends (looks like success unless the client checks)
            self.connection.shutdown(socket.SHUT_RDWR)

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

    return Handler
