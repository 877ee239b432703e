"""How a tool call is written in model text: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.

Shared by the worker (prompt and grammar) and the gateway (parsing answers, writing history).
"""

from __future__ import annotations

import json
from typing import Any

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """The calls in an answer, or None when the answer is not (only) calls."""
    stripped = text.strip()
    if not stripped.startswith(CALL_OPEN):
        return None
    calls: list[dict[str, Any]] = []
    parts = stripped.split(CALL_OPEN)[1:]
    for i, part in enumerate(parts):
        if CALL_CLOSE not in part and i == len(parts) - 1 and calls:
            break  # a last call cut off by max_tokens: keep the complete ones
        body = part.split(CALL_CLOSE, 1)[0].strip()
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        calls.append({"name": data["name"], "arguments": json.dumps(data.get("arguments", {}))})
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
