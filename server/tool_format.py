"""How a tool call is written in model text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Shared by the worker (prompt and grammar) and the gateway (parsing answers, writing history).
"""

from __future__ import annotations

import json
from typing import Any

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_DECODER = json.JSONDecoder()


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in an answer, or None when the answer is not (only) calls. Each call's JSON is read whole
    before its closing tag is looked for: a string argument may hold the tags themselves."""
    stripped = text.strip()
    if not stripped.startswith(CALL_OPEN):
        return None
    calls: list[dict[str, Any]] = []
    at = 0
    while at >= 0:
        start = len(stripped) - len(stripped[at + len(CALL_OPEN):].lstrip())  # the call's JSON, past any space
        try:
            data, end = _DECODER.raw_decode(stripped, start)
        except ValueError:
            if calls and CALL_CLOSE not in stripped[start:]:
                break  # a last call cut off by max_tokens: keep the complete ones
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        rest = stripped[end:].lstrip()
        if rest and not rest.startswith(CALL_CLOSE):
            return None  # more than the call inside its tags
        if not rest and calls:
            break  # a last call cut off before its closing tag: keep the complete ones
        calls.append({"name": data["name"], "arguments": json.dumps(data.get("arguments", {}))})
        at = stripped.find(CALL_OPEN, end)
    return calls or None


def history_message(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant turn that called tools, written back the way the model was asked to call."""
    calls = message.get("tool_calls") or []
    text = "".join(
        CALL_OPEN + json.dumps({"name": c["function"]["name"],
                                "arguments": json.loads(c["function"].get("arguments") or "{}")}) + CALL_CLOSE
        for c in calls
    )
    return {"role": "assistant", "content": (message.get("content") or "") + text}
