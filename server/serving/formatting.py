"""OpenAI response shapes for chat and legacy completions, whole and streamed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from server.backends.base import Result

DONE_FRAME = b"data: [DONE]\n\n"


class LastChunk(bytes):
    """The last chunk of a stream: sent together with the end of the response body."""


# One encoder for every frame: `json.dumps` with options builds a new one per call, on the per-token path.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _JSON.encode(payload).encode() + b"\n\n"


def usage(result: Result) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }
    cached = result.extra.get("cached_tokens")
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    reasoning = result.extra.get("reasoning_tokens")
    if reasoning is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def timings(result: Result, ttft_ms: float, total_ms: float) -> dict[str, Any]:
    """llama.cpp-style timings: the two halves of total time (prompt eval + generation); for a local model,
    the worker that served it."""
    out: dict[str, Any] = {
        "queue_ms": round(result.queue_ms, 3),
        "prompt_n": result.prompt_tokens,
        "prompt_ms": round(result.prompt_ms, 3),
        "predicted_n": result.completion_tokens,
        "predicted_ms": round(result.predicted_ms, 3),
        "ttft_ms": round(ttft_ms, 3),
        "total_ms": round(result.prompt_ms + result.predicted_ms, 3),
        "e2e_ms": round(total_ms, 3),
    }
    worker = result.extra.get("worker")
    if worker:
        out["worker"] = worker
    return out


@dataclass(frozen=True)
class Shape:
    endpoint: Literal["chat", "completions"]
    id: str
    created: int
    model: str

    @property
    def object(self) -> str:
        return "chat.completion" if self.endpoint == "chat" else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"

    def _logprobs(self, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        if entries is None:
            return None
        if self.endpoint == "chat":
            return {"content": entries, "refusal": None}
        offsets, at = [], 0
        for entry in entries:
            offsets.append(at)
            at += len(entry["token"])
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets,
        }

    def whole(self, texts: dict[int, str], result: Result, extra: dict[str, Any],
              logprobs: dict[int, list[dict[str, Any]]] | None = None,
              calls: dict[int, list[dict[str, Any]]] | None = None,
              fields: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
        """`fields`: per choice, more message fields (`reasoning_content`, `refusal`)."""
        choices = []
        for index in sorted(set(texts) | set(result.finish_reasons)) or [0]:
            reason = result.finish_reasons.get(index, result.finish_reason)
            lp = self._logprobs(logprobs.get(index, [])) if logprobs is not None else None
            if self.endpoint == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": texts.get(index, ""), "refusal": None}
                if calls and index in calls:
                    message["content"] = texts.get(index) or None
                    message["tool_calls"] = calls[index]
                more = (fields or {}).get(index, {})
                if more.get("refusal") and not message["content"]:
                    message["content"] = None
                message.update(more)
                choices.append({"index": index, "message": message, "logprobs": lp, "finish_reason": reason})
            else:
                choices.append({"index": index, "text": texts.get(index, ""), "logprobs": lp, "finish_reason": reason})
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage(result),
            **extra,
        }

    @cached_property
    def _text_frame(self) -> tuple[bytes, bytes]:
        """The bytes around a plain text chunk's JSON-encoded text (choice 0): the frame `chunk` makes,
        cut where the text goes, so that a token's chunk is two joins and one string encoding."""
        marker = "\x00"
        framed = self.chunk(text=marker).decode()
        head, _, tail = framed.rpartition(_JSON.encode(marker))  # the last field a caller names
        return head.encode(), tail.encode()

    def text_chunk(self, text: str) -> bytes:
        """`chunk(text=text)`, byte for byte, for the frame every token of a plain answer gets."""
        head, tail = self._text_frame
        return head + _JSON.encode(text).encode() + tail

    def chunk(self, *, text: str | None = None, role: bool = False, finish_reason: str | None = None,
              extra: dict[str, Any] | None = None, index: int = 0,
              logprobs: list[dict[str, Any]] | None = None, tool_calls: list[dict[str, Any]] | None = None,
              reasoning: str = "", refusal: str = "") -> bytes:
        lp = self._logprobs(logprobs) if logprobs else None
        if self.endpoint == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if reasoning:
                delta["reasoning_content"] = reasoning
            if refusal:
                delta["refusal"] = refusal
            if tool_calls:  # whole calls get their position as index; fragments keep theirs
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish_reason}
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self.endpoint == "chat":
            body["usage"] = None
        if extra:
            body.update(extra)
        return sse(body)

    def usage_chunk(self, result: Result) -> bytes:
        return sse({
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage(result),
        })
