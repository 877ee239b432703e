"""A served chat stream as Anthropic streams a message.

    message_start, ping
    content_block_start / content_block_delta / content_block_stop, per block in order:
        thinking (thinking_delta), text (text_delta), tool_use (input_json_delta)
    message_delta (stop_reason, stop_sequence, usage), message_stop
    an error after the start: one `error` event, and the stream ends

The service's stream (OpenAI chunks, the last one ending the body) is read chunk by chunk and each
read is answered in one write; the last write ends the body (`LastChunk`) as the service's does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from server.anthropic.answer import message_id, stop_reason, usage
from server.anthropic.errors import envelope, type_for_openai
from server.backends.base import Result
from server.serving.formatting import LastChunk


def event(name: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": name, **payload}, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()


def openai_chunks(data: bytes) -> list[dict[str, Any] | None]:
    """The JSON chunks of SSE frames (None for `[DONE]`); comments are skipped."""
    out: list[dict[str, Any] | None] = []
    for frame in data.split(b"\n\n"):
        if frame.startswith(b"data: "):
            payload = frame[len(b"data: "):]
            out.append(None if payload == b"[DONE]" else json.loads(payload))
    return out


@dataclass
class MessageStream:
    """The Anthropic events for one stream's OpenAI chunks; `blocks`: how many were opened."""

    model: str
    result: Callable[[], Result] | None = None
    id: str = field(default_factory=message_id)
    blocks: int = 0
    open: str | None = None  # the kind of the block now open
    finish: str | None = None
    usage: dict[str, Any] | None = None
    started: bool = False

    def start(self) -> bytes:
        self.started = True
        result = self.result() if self.result is not None else None
        begun = usage({"prompt_tokens": result.prompt_tokens if result is not None else 0})
        message: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": begun}
        return event("message_start", {"message": message}) + event("ping", {})

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [event("content_block_stop", {"index": self.blocks - 1})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        out.append(event("content_block_start", {"index": self.blocks, "content_block": block}))
        self.blocks += 1
        self.open = kind
        return out

    def _delta(self, kind: str, delta: dict[str, Any], block: dict[str, Any]) -> list[bytes]:
        out = self._open(kind, block) if self.open != kind else []
        out.append(event("content_block_delta", {"index": self.blocks - 1, "delta": delta}))
        return out

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._delta("thinking", {"type": "thinking_delta", "thinking": delta["reasoning_content"]},
                                   {"type": "thinking", "thinking": "", "signature": ""})
            for text in (delta.get("content"), delta.get("refusal")):
                if text:
                    out += self._delta("text", {"type": "text_delta", "text": text}, {"type": "text", "text": ""})
            for call in delta.get("tool_calls") or []:
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                out += self._close()
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        if call.get("id"):  # a new call: its id and name first
            out += self._open("tool_use", {"type": "tool_use", "id": call["id"], "name": function.get("name", ""),
                                           "input": {}})
        arguments = function.get("arguments") or ""
        if arguments and self.open == "tool_use":
            out.append(event("content_block_delta", {"index": self.blocks - 1,
                                                     "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return out

    def end(self) -> list[bytes]:
        result = self.result() if self.result is not None else None
        reason, sequence = stop_reason(self.finish, result)
        final = usage(self.usage)
        return [*self._close(), event("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                        "usage": final}),
                event("message_stop", {})]

    def error(self, body: dict[str, Any]) -> bytes:
        error = body.get("error") or {}
        return event("error", {"error": envelope(type_for_openai(error.get("type")),
                                                 str(error.get("message", "")))["error"]})


async def anthropic_stream(chunks: AsyncIterator[bytes], model: str,
                           result: Callable[[], Result] | None) -> AsyncIterator[bytes]:
    """The service's OpenAI stream `chunks` as Anthropic's events."""
    message = MessageStream(model, result)
    try:
        async for data in chunks:
            out: list[bytes] = [] if message.started else [message.start()]
            ended = False
            for chunk in openai_chunks(bytes(data)):
                if chunk is None:
                    out += message.end()
                    ended = True
                elif "error" in chunk and "choices" not in chunk:
                    out.append(message.error(chunk))
                    ended = True
                    break
                else:
                    out += message.chunk(chunk)
            if ended or isinstance(data, LastChunk):
                yield LastChunk(b"".join(out))
                return
            if out:
                yield b"".join(out)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
