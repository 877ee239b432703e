"""Responses `input` items into stored item resources, and item resources into chat messages.

An item the server cannot serve is refused naming where it is (`input[2].content[0].type`);
every item kept gets an id and a status, as `GET /v1/responses/{id}/input_items` shows them, and
the same resources rebuild the conversation when `previous_response_id` continues it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from server.errors import InvalidRequestError

ROLES = ("user", "system", "developer", "assistant")
INPUT_PARTS = ("input_text", "input_image", "input_file")
OUTPUT_PARTS = ("output_text", "refusal")
SKIPPED_ITEMS = ("reasoning",)  # a hosted model's reasoning sent back: not replayed into a chat prompt


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"Invalid value for '{param}': expected a string.", param)
    return value


def _part(part: Any, role: str, where: str) -> dict[str, Any]:
    """One content part as stored (input parts for user/system/developer, output parts for assistant)."""
    if not isinstance(part, dict):
        raise _bad(f"Invalid value for '{where}': expected an object.", where)
    kind = part.get("type")
    allowed = OUTPUT_PARTS if role == "assistant" else INPUT_PARTS
    if role == "assistant" and kind == "input_text":
        kind = "output_text"  # the Agents SDK and others send assistant history as input_text
    if kind not in allowed:
        raise _bad(f"Invalid value for '{where}.type': {json.dumps(kind)} is not one of {list(allowed)} "
                   f"for a '{role}' message.", f"{where}.type")
    if kind == "input_text":
        return {"type": "input_text", "text": _text(part.get("text"), f"{where}.text")}
    if kind == "output_text":
        return {"type": "output_text", "text": _text(part.get("text"), f"{where}.text"), "annotations": [],
                "logprobs": []}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        if part.get("file_id") is not None:
            raise _bad("Files uploaded to OpenAI are not available here; send the image as 'image_url'.",
                       f"{where}.file_id")
        url = _text(part.get("image_url"), f"{where}.image_url")
        return {"type": "input_image", "image_url": url, "detail": part.get("detail") or "auto"}
    if part.get("file_id") is not None or not isinstance(part.get("file_data"), str):
        raise _bad("A file part needs 'file_data' (files uploaded to OpenAI are not available here).",
                   f"{where}.file_data")
    return {"type": "input_file", "file_data": part["file_data"], "filename": part.get("filename") or "file"}


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise _bad(f"Invalid value for '{where}.role': {json.dumps(role)} is not one of {list(ROLES)}.",
                   f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        parts = [_part({"type": "output_text" if role == "assistant" else "input_text", "text": content}, role,
                       f"{where}.content")]
    elif isinstance(content, list):
        parts = [_part(p, role, f"{where}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise _bad(f"Invalid value for '{where}.content': expected a string or a list of parts.",
                   f"{where}.content")
    return {"id": item.get("id") or new_id("msg"), "type": "message", "role": role, "status": "completed",
            "content": parts}


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    arguments = _text(item.get("arguments"), f"{where}.arguments")
    try:
        json.loads(arguments or "{}")
    except ValueError:
        raise _bad(f"Invalid value for '{where}.arguments': not a JSON value.", f"{where}.arguments") from None
    return {"id": item.get("id") or new_id("fc"), "type": "function_call",
            "call_id": _text(item.get("call_id"), f"{where}.call_id"),
            "name": _text(item.get("name"), f"{where}.name"), "arguments": arguments, "status": "completed"}


def _function_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    output = item.get("output")
    if isinstance(output, list):  # a list of input_text parts: their text
        output = "".join(_part(p, "user", f"{where}.output[{j}]").get("text", "") for j, p in enumerate(output))
    return {"id": item.get("id") or new_id("fco"), "type": "function_call_output",
            "call_id": _text(item.get("call_id"), f"{where}.call_id"),
            "output": _text(output, f"{where}.output"), "status": "completed"}


def read_input(value: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The request's `input` as item resources (ids, statuses), refused by name where not served."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message({"role": "user", "content": value}, "input")]
    items = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            items.append(_message(item, where))
        elif kind == "function_call":
            items.append(_function_call(item, where))
        elif kind == "function_call_output":
            items.append(_function_output(item, where))
        elif kind in SKIPPED_ITEMS:
            continue
        else:
            raise _bad(f"The input item type {json.dumps(kind)} is not supported by this server (served: "
                       "'message', 'function_call', 'function_call_output').", f"{where}.type")
    return items


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part["refusal"]}
    if kind == "input_image":
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part["detail"]}}
    return {"type": "file", "file": {"file_data": part["file_data"], "filename": part["filename"]}}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Item resources as chat messages: consecutive function calls join one assistant message."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            parts = [_chat_part(p) for p in item["content"]]
            if item["role"] == "assistant":
                text = "".join(p.get("text", "") for p in parts)
                messages.append({"role": "assistant", "content": text})
            elif all(p["type"] == "text" for p in parts):
                messages.append({"role": item["role"], "content": "".join(p["text"] for p in parts)})
            else:
                messages.append({"role": item["role"], "content": parts})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and (last.get("tool_calls") or not last["content"]):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls") and message["content"] == "":
            message["content"] = None
    return messages
