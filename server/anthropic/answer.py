"""A served chat answer in Anthropic's shape: a whole `message`, its content blocks and stop reason.

    finish_reason stop        -> end_turn, or stop_sequence (with the sequence) when one ended the text
    finish_reason length      -> max_tokens
    finish_reason tool_calls  -> tool_use
    finish_reason content_filter -> refusal
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from server.backends.base import Result

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def stop_reason(finish_reason: str | None, result: Result | None) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI finish reason and the generation's result."""
    matched = result.extra.get("stop_sequence") if result is not None else None
    if finish_reason in (None, "stop"):
        return ("stop_sequence", matched) if isinstance(matched, str) else ("end_turn", None)
    return STOP_REASONS.get(finish_reason, "end_turn"), None


def usage(openai_usage: dict[str, Any] | None) -> dict[str, Any]:
    got = openai_usage or {}
    cached = (got.get("prompt_tokens_details") or {}).get("cached_tokens")
    prompt = int(got.get("prompt_tokens", 0))
    return {"input_tokens": prompt, "output_tokens": int(got.get("completion_tokens", 0)),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": int(cached or 0)}


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's JSON arguments as the `input` object (arguments that are not an object: under `value`)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def whole_message(body: dict[str, Any], result: Result | None, model: str) -> dict[str, Any]:
    """The OpenAI chat completion `body` (one choice) as an Anthropic message."""
    choice = body["choices"][0]
    message = choice["message"]
    content: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    elif message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or []:
        content.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                        "input": tool_input(call["function"]["arguments"])})
    reason, sequence = stop_reason(choice.get("finish_reason"), result)
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage(body.get("usage"))}
