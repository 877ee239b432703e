"""A Responses request as the one internal request (a chat request), and its errors named as the
Responses API names its parameters.

Function tools become chat tools; a built-in tool type (`web_search`, `file_search`, ...) is a 400
naming `tools[i].type`: the server cannot run it. `text.format` becomes `response_format` (a
`json_schema` is decoded under its grammar on a local model), `reasoning.effort` becomes
`reasoning_effort` (a hosted model's provider gets it; a local model refuses it by name).
"""

from __future__ import annotations

import json
import re
from typing import Any

from server.errors import InvalidRequestError, SlmError
from server.protocol_responses import ResponsesRequest
from server.responses.items import chat_messages

FUNCTION_TOOL_FIELDS = ("type", "name", "description", "parameters", "strict")
TOOL_CHOICE_MODES = ("none", "auto", "required")
VERBOSITY_DEFAULT = (None, "medium")

# chat parameter names (as an error names them) -> the Responses parameter they came from
_PARAMS = (
    (re.compile(r"^messages(\.\d+.*)?$"), "input"),
    (re.compile(r"^tools\.(\d+)\.function\.(.+)$"), r"tools[\1].\2"),
    (re.compile(r"^tools\.(\d+)(.*)$"), r"tools[\1]\2"),
    (re.compile(r"^response_format\.json_schema\.(.+)$"), r"text.format.\1"),
    (re.compile(r"^response_format.*$"), "text.format"),
    (re.compile(r"^max_(completion_)?tokens$"), "max_output_tokens"),
    (re.compile(r"^reasoning_effort$"), "reasoning.effort"),
    (re.compile(r"^tool_choice\.function\.(.+)$"), r"tool_choice.\1"),
)


def responses_param(param: str | None) -> str | None:
    """A chat parameter's name as the Responses API calls it."""
    if param is None:
        return None
    for pattern, replacement in _PARAMS:
        if pattern.match(param):
            return pattern.sub(replacement, param)
    return param


def renamed(exc: SlmError) -> SlmError:
    """The same error naming the Responses parameter (its message too, where it quotes the name)."""
    new = responses_param(exc.param)
    if new != exc.param and exc.param is not None and new is not None:
        exc.message = exc.message.replace(f"'{exc.param}'", f"'{new}'").replace("'reasoning_effort'",
                                                                               "'reasoning.effort'")
        exc.param = new
        exc.args = (exc.message,)
    return exc


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequestError(
                f"The tool type {json.dumps(kind)} is not supported by this server: it runs no built-in tools; "
                "describe it as a 'function' tool and run it yourself.", param=f"tools[{i}].type")
        for name in tool:
            if name not in FUNCTION_TOOL_FIELDS:
                raise InvalidRequestError(f"Unknown parameter: 'tools[{i}].{name}'.", param=f"tools[{i}].{name}")
        if not isinstance(tool.get("name"), str):
            raise InvalidRequestError(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name")
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        if choice is not None and choice not in TOOL_CHOICE_MODES:
            raise InvalidRequestError(f"Invalid value for 'tool_choice': {json.dumps(choice)} is not one of "
                                      f"{list(TOOL_CHOICE_MODES)}.", param="tool_choice")
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise InvalidRequestError("Only a 'function' tool choice naming a function tool is supported "
                                  "(this server runs no built-in tools and no 'allowed_tools' sets).",
                                  param="tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    if text is None:
        return None
    for name in text:
        if name not in ("format", "verbosity"):
            raise InvalidRequestError(f"Unknown parameter: 'text.{name}'.", param=f"text.{name}")
    if text.get("verbosity") not in VERBOSITY_DEFAULT:
        raise InvalidRequestError("The parameter 'text.verbosity' is not supported by this server.",
                                  param="text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise InvalidRequestError("Invalid value for 'text.format': expected an object.", param="text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return None if kind == "text" else {"type": "json_object"}
    if kind != "json_schema":
        raise InvalidRequestError(f"Invalid value for 'text.format.type': {json.dumps(kind)} is not one of "
                                  "['text', 'json_object', 'json_schema'].", param="text.format.type")
    schema = {k: v for k, v in fmt.items() if k != "type"}
    return {"type": "json_schema", "json_schema": schema}


def chat_request(req: ResponsesRequest, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request body for `items` (history then new input) under `req`'s parameters."""
    messages = chat_messages(items)
    if req.instructions:
        messages.insert(0, {"role": "system", "content": req.instructions})
    if not messages:
        raise InvalidRequestError("The input holds no message to answer.", param="input")
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    optional = {
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature, "top_p": req.top_p,
        "tools": chat_tools(req.tools), "tool_choice": chat_tool_choice(req.tool_choice),
        "parallel_tool_calls": req.parallel_tool_calls, "response_format": response_format(req.text),
        "user": req.user, "priority": req.priority,
        "reasoning_effort": req.reasoning.effort if req.reasoning is not None else None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body

