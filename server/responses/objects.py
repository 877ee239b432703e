"""The Response object: its skeleton from the request, its output and usage from a chat answer."""

from __future__ import annotations

import time
from typing import Any

from server.protocol_responses import ResponsesRequest
from server.responses.items import new_id

# a chat finish reason -> (status, incomplete_details.reason)
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def skeleton(req: ResponsesRequest, response_id: str, model: str, tools: list[dict[str, Any]],
             status: str = "in_progress") -> dict[str, Any]:
    """The response as it is before any output: every field the spec requires, echoing the request."""
    fmt = (req.text or {}).get("format") or {"type": "text"}
    return {
        "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "background": bool(req.background), "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens, "model": model,
        "output": [], "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "store": req.stores, "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": fmt, "verbosity": "medium"},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto", "tools": tools,
        "top_p": req.top_p if req.top_p is not None else 1.0, "truncation": req.truncation or "disabled",
        "usage": None, "user": req.user, "metadata": req.metadata or {},
        # asked for by Open Responses' response resource; what this server does with them
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "top_logprobs": 0, "max_tool_calls": None,
        "service_tier": "default", "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key,
    }


def echoed_tools(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The function tools as the response echoes them (all fields present)."""
    return [{"type": "function", "name": t["name"], "description": t.get("description"),
             "parameters": t.get("parameters"), "strict": t.get("strict", True)} for t in req.tools or []]


def usage(chat_usage: dict[str, Any] | None, local: bool) -> dict[str, Any]:
    """Chat usage in Responses terms. A local worker keeps the prompt it evaluated for the next turn
    (its prefix cache), so what it did not find cached it wrote; a hosted provider's writes are unknown."""
    chat_usage = chat_usage or {}
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = int((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": prompt - cached if local else 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def message_item(text: str, item_id: str | None = None, status: str = "completed",
                 refusal: str | None = None) -> dict[str, Any]:
    parts = [text_part(text)] if text or not refusal else []
    if refusal:
        parts.append(part("refusal", refusal))
    return {"id": item_id or new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": parts if status != "in_progress" else []}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def part(kind: str, text: str) -> dict[str, Any]:
    """A message's content part: `output_text` or `refusal`."""
    return text_part(text) if kind == "output_text" else {"type": "refusal", "refusal": text}


def reasoning_item(text: str, item_id: str | None = None, status: str = "completed") -> dict[str, Any]:
    """A hosted model's reasoning text (`reasoning_content`) as a reasoning item."""
    return {"id": item_id or new_id("rs"), "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []}


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None,
              status: str = "completed") -> dict[str, Any]:
    return {"id": item_id or new_id("fc"), "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def finish(response: dict[str, Any], finish_reason: str | None, chat_usage: dict[str, Any] | None,
           local: bool) -> dict[str, Any]:
    """The response completed (or incomplete, when the answer was cut short), with its usage."""
    reason = _INCOMPLETE.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["completed_at"] = int(time.time()) if not reason else None
    response["usage"] = usage(chat_usage, local)
    return response


def from_chat(response: dict[str, Any], body: dict[str, Any], local: bool) -> dict[str, Any]:
    """A whole chat answer (one choice) as the response's output."""
    choice = body["choices"][0]
    message = choice["message"]
    output = []
    if message.get("reasoning_content"):
        output.append(reasoning_item(message["reasoning_content"]))
    if message.get("content") or message.get("refusal"):
        output.append(message_item(message.get("content") or "", refusal=message.get("refusal")))
    for call in message.get("tool_calls") or []:
        output.append(call_item(call["id"], call["function"]["name"], call["function"]["arguments"]))
    if not output:
        output.append(message_item(""))
    response["output"] = output
    return finish(response, choice.get("finish_reason"), body.get("usage"), local)


def failed(response: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    response["status"] = "failed"
    response["error"] = {"code": code, "message": message}
    return response


def error_code(status: int) -> str:
    """A failure's `error.code` from the spec's short list."""
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_prompt" if 400 <= status < 500 else "server_error"
