"""What a hosted model's stream chunks say, read faithfully: one `Delta` per choice in a chunk.

Each choice's text, reasoning text (`reasoning_content`), refusal, tool call fragments (as the
provider streamed them: index, id and name first, then pieces of the arguments) and logprobs; a
choice's finish reason; the usage, with cached prompt tokens and reasoning tokens when given.
A legacy completion's logprobs (`tokens`, `token_logprobs`...) are read into the chat form the
gateway formats both endpoints from.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.backends.base import Delta


@dataclass
class Read:
    deltas: list[Delta] = field(default_factory=list)
    usage: Any = None


def _plain(value: Any) -> Any:
    """A litellm object (pydantic model or dict-like) as plain JSON values."""
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return _plain(dump(exclude_none=True))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _tool_calls(value: Any) -> list[dict[str, Any]] | None:
    if not value:
        return None
    out = []
    for position, raw in enumerate(_plain(value)):
        call: dict[str, Any] = {"index": int(raw.get("index", position))}
        if raw.get("id"):
            call["id"] = raw["id"]
            call["type"] = raw.get("type") or "function"
        function = {k: v for k, v in (raw.get("function") or {}).items() if k in ("name", "arguments")}
        if function:
            call["function"] = function
        out.append(call)
    return out


def _logprobs(value: Any, chat: bool) -> list[dict[str, Any]] | None:
    plain = _plain(value)
    if not isinstance(plain, dict):
        return None
    if chat:
        content = plain.get("content")
        return content if isinstance(content, list) and content else None
    tokens = plain.get("tokens") or []
    values = plain.get("token_logprobs") or []
    tops = plain.get("top_logprobs") or []
    entries = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        entries.append({"token": token, "logprob": values[i] if i < len(values) else 0.0,
                        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]})
    return entries or None


def read_chunk(chunk: Any, chat: bool) -> Read:
    out = Read(usage=getattr(chunk, "usage", None))
    for position, choice in enumerate(getattr(chunk, "choices", None) or []):
        index = getattr(choice, "index", None)
        delta = Delta(index if isinstance(index, int) else position)
        message = getattr(choice, "delta", None) if chat else None
        if message is not None:
            delta.text = _text(getattr(message, "content", None))
            delta.reasoning = _text(getattr(message, "reasoning_content", None))
            # refusals come from `RefusalTap` (litellm drops refusal-only chunks; reading both would repeat them)
            delta.tool_calls = _tool_calls(getattr(message, "tool_calls", None))
        else:
            delta.text = _text(getattr(choice, "text", None))
        delta.logprobs = _logprobs(getattr(choice, "logprobs", None), chat)
        finish = getattr(choice, "finish_reason", None)
        if delta.carries():
            out.deltas.append(delta)
        if isinstance(finish, str) and finish:
            out.deltas.append(Delta(delta.index, finish_reason=finish))
    return out


def usage_details(usage: Any) -> dict[str, int]:
    """`cached_tokens` and `reasoning_tokens`, where the provider reported them."""
    out: dict[str, int] = {}
    for parent, name in (("prompt_tokens_details", "cached_tokens"),
                         ("completion_tokens_details", "reasoning_tokens")):
        value = getattr(getattr(usage, parent, None), name, None)
        if isinstance(value, int):
            out[name] = value
    return out


class RefusalTap:
    """The provider's refusal text, read from its raw chunks as litellm pulls them.

    litellm drops a streamed chunk whose delta holds only a `refusal` (as OpenAI streams refusals), so
    the tap wraps the provider stream under litellm's wrapper and keeps each refusal piece, in order,
    for `drain()` to hand out before the next chunk litellm yields. Streams without that shape are
    left alone.
    """

    def __init__(self) -> None:
        self._pending: list[Delta] = []

    def wrap(self, stream: Any) -> None:
        inner = getattr(stream, "completion_stream", None)
        if inner is None or not hasattr(inner, "__aiter__"):
            return

        async def tapped() -> AsyncIterator[Any]:
            try:
                async for raw in inner:
                    self._note(raw)
                    yield raw
            finally:
                closer = getattr(inner, "aclose", None) or getattr(inner, "close", None)
                if closer is not None:
                    result = closer()
                    if inspect.isawaitable(result):
                        await result

        stream.completion_stream = tapped()

    def _note(self, raw: Any) -> None:
        for position, choice in enumerate(getattr(raw, "choices", None) or []):
            refusal = getattr(getattr(choice, "delta", None), "refusal", None)
            if isinstance(refusal, str) and refusal:
                index = getattr(choice, "index", None)
                self._pending.append(Delta(index if isinstance(index, int) else position, refusal=refusal))

    def drain(self) -> list[Delta]:
        out, self._pending = self._pending, []
        return out
