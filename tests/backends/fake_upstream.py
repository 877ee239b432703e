"""A small OpenAI-compatible upstream on 127.0.0.1, in a thread, told per request how to answer.

`FakeUpstream.script(*replies)` queues what the next requests get, in order; once the script is
used up every request gets `default`. Each reply is one of:

    Reply.ok(text)                  a normal answer (whole or streamed, as the request asks)
    Reply.error(status, ...)        an OpenAI error envelope with that status (and headers)
    Reply.hang()                    accept the request, then say nothing until `release()`
    Reply.hold(text)                count the request as in flight, answer after `release()`
    Reply.drop_mid_stream(text)     stream a few chunks, then cut the connection (broken chunking)
    Reply.truncate(text)            stream a few chunks, then close "cleanly" (no finish, no [DONE])
    Reply.calls(("f", '{"a": 1}'), ...)  tool calls (streamed as OpenAI does: id and name, then argument pieces)
    Reply.describe()                an answer naming the image parts of the last user message

`Reply.ok(..., reasoning=..., refusal=...)` adds `reasoning_content` / `refusal`. Every answer has as many
choices as the request's `n` (choice i > 0 says "choice i: ..."), logprobs when asked (one entry per word)
and usage with `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`.

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
    tool_calls: tuple[tuple[str, str], ...] = ()  # (name, arguments JSON)
    reasoning: str | None = None
    refusal: str | None = None

    @classmethod
    def ok(cls, text: str = "Hello from the fake upstream", *, finish_reason: str = "stop",
           reasoning: str | None = None, refusal: str | None = None) -> Reply:
        return cls("ok", text=text, finish_reason=finish_reason, reasoning=reasoning, refusal=refusal)

    @classmethod
    def calls(cls, *calls: tuple[str, str], text: str = "") -> Reply:
        return cls("ok", text=text, finish_reason="tool_calls", tool_calls=calls)

    @classmethod
    def describe(cls) -> Reply:
        return cls("describe")

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
            if not body.get("stream"):  # (the gateway always streams; a whole answer serves direct callers)
                self._json(200, self._whole(reply, body, chat), {})
                return
            self._stream(reply, body, chat)

        def _usage(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
            prompt = json.dumps(body.get("messages") or body.get("prompt"))
            p, c = max(1, len(prompt) // 4), len(_words(reply.text))
            r = len(_words(reply.reasoning)) if reply.reasoning else 0
            return {"prompt_tokens": p, "completion_tokens": c + r, "total_tokens": p + c + r,
                    "prompt_tokens_details": {"cached_tokens": p // 2},
                    "completion_tokens_details": {"reasoning_tokens": r}}

        def _texts(self, reply: Reply, body: dict[str, Any]) -> list[str]:
            text = reply.text
            if reply.kind == "describe":
                urls = [part["image_url"]["url"] for m in body.get("messages", []) if m.get("role") == "user"
                        and isinstance(m.get("content"), list) for part in m["content"] if part["type"] == "image_url"]
                text = f"I see {len(urls)} image(s): {' '.join(urls)}"
            return [text if i == 0 else f"choice {i}: {text}" for i in range(int(body.get("n") or 1))]

        @staticmethod
        def _calls(reply: Reply) -> list[dict[str, Any]]:
            return [{"id": f"call_fake_{i}", "type": "function", "function": {"name": name, "arguments": args}}
                    for i, (name, args) in enumerate(reply.tool_calls)]

        @staticmethod
        def _logprobs(words: list[str], body: dict[str, Any], chat: bool) -> dict[str, Any] | None:
            if not body.get("logprobs"):
                return None
            top = int((body.get("top_logprobs") if chat else body.get("logprobs")) or 0)
            if chat:
                return {"content": [{"token": w, "logprob": -0.25, "bytes": list(w.encode()),
                                     "top_logprobs": [{"token": w, "logprob": -0.25, "bytes": list(w.encode())}
                                                      ][:top]} for w in words], "refusal": None}
            offsets = [sum(len(x) for x in words[:i]) for i in range(len(words))]
            return {"tokens": words, "token_logprobs": [-0.25] * len(words),
                    "top_logprobs": [{w: -0.25} if top else None for w in words], "text_offset": offsets}

        def _whole(self, reply: Reply, body: dict[str, Any], chat: bool) -> dict[str, Any]:
            choices: list[dict[str, Any]] = []
            for i, text in enumerate(self._texts(reply, body)):
                logprobs = self._logprobs(_words(text), body, chat)
                if chat:
                    message: dict[str, Any] = {"role": "assistant", "content": text or None,
                                               "refusal": reply.refusal}
                    if reply.tool_calls:
                        message["tool_calls"] = self._calls(reply)
                    if reply.reasoning:
                        message["reasoning_content"] = reply.reasoning
                    choices.append({"index": i, "message": message, "logprobs": logprobs,
                                    "finish_reason": reply.finish_reason})
                else:
                    choices.append({"index": i, "text": text, "logprobs": logprobs,
                                    "finish_reason": reply.finish_reason})
            return {"id": "fake-1", "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model", "fake-model"), "choices": choices,
                    "usage": self._usage(reply, body)}

        def _chunk(self, body: dict[str, Any], chat: bool, text: str | None, finish: str | None,
                   role: bool = False, index: int = 0, **fields: Any) -> dict[str, Any]:
            logprobs = fields.pop("logprobs", None)
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if role else {}
                if text is not None:
                    delta["content"] = text
                delta.update(fields)
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                          "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            return {"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion",
                    "created": int(time.time()), "model": body.get("model", "fake-model"), "choices": [choice]}

        def _pieces(self, reply: Reply, body: dict[str, Any], chat: bool, index: int,
                    text: str) -> list[dict[str, Any]]:
            """One choice's chunks after its role: reasoning, refusal, words (with logprobs), tool calls."""
            out = []
            for word in _words(reply.reasoning) if reply.reasoning else []:
                out.append(self._chunk(body, chat, None, None, index=index, reasoning_content=word))
            if reply.refusal:
                out.append(self._chunk(body, chat, None, None, index=index, refusal=reply.refusal))
            for word in _words(text) if text else []:
                out.append(self._chunk(body, chat, word, None, index=index,
                                       logprobs=self._logprobs([word], body, chat)))
            for i, call in enumerate(self._calls(reply)):
                head = {"index": i, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}
                out.append(self._chunk(body, chat, None, None, index=index, tool_calls=[head]))
                args = call["function"]["arguments"]
                for piece in (args[:len(args) // 2], args[len(args) // 2:]):
                    out.append(self._chunk(body, chat, None, None, index=index,
                                           tool_calls=[{"index": i, "function": {"arguments": piece}}]))
            return out

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

            texts = self._texts(reply, body)
            per_choice = [self._pieces(reply, body, chat, i, text) for i, text in enumerate(texts)]
            for i in range(len(texts)):
                if chat:
                    send(self._chunk(body, chat, "", None, role=True, index=i))
            sent = 0
            for step in range(max(map(len, per_choice))):
                for pieces in per_choice:
                    if step < len(pieces):
                        if reply.kind in ("drop", "truncate") and sent == 2:
                            self._cut()
                            return
                        send(pieces[step])
                        sent += 1
            for i in range(len(texts)):
                send(self._chunk(body, chat, None if chat else "", reply.finish_reason, index=i))
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
