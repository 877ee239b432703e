"""An Anthropic Messages request as the one internal chat request (`server.protocol.ChatCompletionRequest`).

    system                          -> a system message first
    text / image blocks             -> text / `image_url` parts (a base64 source as a `data:` URL)
    assistant tool_use blocks       -> the assistant message's `tool_calls` (input as JSON arguments)
    user tool_result blocks         -> `tool` messages, ahead of the user's other blocks (images in a
                                       result join those); `is_error` marks the text as an error
    assistant thinking blocks       -> `thinking_blocks` of the message (hosted providers read them)
    tools[].input_schema            -> function `parameters`
    tool_choice auto | any | tool | none -> auto | required | the named function | none;
                                       disable_parallel_tool_use -> parallel_tool_calls false
    stop_sequences                  -> stop;   metadata.user_id -> user
    thinking (but disabled)         -> `thinking`, for hosted models (a local model refuses it)
    output_config.format            -> response_format json_schema (local models: grammar-constrained)
    output_config.effort            -> reasoning_effort, for hosted models (a local model refuses it)

The internal request is validated as any chat request is, so every bound of the chat path holds;
its refusals are renamed to the Anthropic field they came from.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from server.anthropic.protocol import (
    AnyChoice,
    Block,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    NoneChoice,
    OutputConfig,
    TextBlock,
    ThinkingBlock,
    ThinkingDisabled,
    ToolChoiceNamed,
    ToolResultBlock,
    ToolUseBlock,
)
from server.api.errors import from_validation
from server.errors import InvalidRequestError
from server.protocol import ChatCompletionRequest

# internal parameter names -> the Anthropic field they came from (for refusals)
RENAMED = (("stop", "stop_sequences"), ("user", "metadata.user_id"), ("messages", "messages"),
           ("response_format", "output_config.format"), ("reasoning_effort", "output_config.effort"))


def to_chat_request(req: MessagesRequest | CountTokensRequest) -> ChatCompletionRequest:
    data: dict[str, Any] = {"model": req.model, "messages": _messages(req)}
    if req.tools:
        data["tools"] = [{"type": "function", "function": {
            "name": tool.name, "parameters": tool.input_schema,
            **({"description": tool.description} if tool.description is not None else {})}} for tool in req.tools]
    if req.tool_choice is not None:
        _tool_choice(req, data)
    if req.thinking is not None and not isinstance(req.thinking, ThinkingDisabled):
        data["thinking"] = req.thinking.model_dump(exclude_none=True)
    if isinstance(req, MessagesRequest):
        data.update({"max_tokens": req.max_tokens, "stream": req.stream})
        if req.stream:
            data["stream_options"] = {"include_usage": True}
        for name in ("temperature", "top_p", "top_k", "priority"):
            if getattr(req, name) is not None:
                data[name] = getattr(req, name)
        if req.stop_sequences:
            data["stop"] = req.stop_sequences
        if req.metadata is not None and req.metadata.user_id is not None:
            data["user"] = req.metadata.user_id
        if req.output_config is not None:
            _output_config(req.output_config, data)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise _renamed(from_validation(list(exc.errors()))) from None
    except InvalidRequestError as exc:
        raise _renamed(exc) from None


def _renamed(exc: InvalidRequestError) -> InvalidRequestError:
    param = exc.param or ""
    if param.startswith("tools.") and param.count(".") >= 3:  # tools.N.function.parameters...
        head = ".".join(param.split(".")[:2])
        exc.param = head + ".input_schema"
    for internal, anthropic in RENAMED:
        if param == internal or param.startswith(internal + "."):
            exc.param = anthropic  # an internal message's index is not the client's
    if exc.param != param and param:
        exc.message = exc.message.replace(f"'{param}'", f"'{exc.param}'")
    return exc


def _output_config(config: OutputConfig, data: dict[str, Any]) -> None:
    if config.format is not None:
        data["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": config.format.schema_}}
    if config.effort is not None:
        data["reasoning_effort"] = config.effort


def _tool_choice(req: MessagesRequest | CountTokensRequest, data: dict[str, Any]) -> None:
    choice = req.tool_choice
    if isinstance(choice, NoneChoice):
        data["tool_choice"] = "none"
        return
    if isinstance(choice, AnyChoice):
        data["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceNamed):
        data["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    else:
        data["tool_choice"] = "auto"
    if choice is not None and choice.disable_parallel_tool_use:
        data["parallel_tool_calls"] = False


def _messages(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = req.system_text()
    if system is not None:
        out.append({"role": "system", "content": system})
    for message in req.messages:
        if isinstance(message.content, str):
            out.append({"role": message.role, "content": message.content})
        elif message.role == "assistant":
            out.append(_assistant(message.content))
        else:
            out.extend(_user(message.content))
    return out


def _assistant(blocks: list[Block]) -> dict[str, Any]:
    text, calls, thinking = [], [], []
    for block in blocks:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        elif isinstance(block, ThinkingBlock):
            thinking.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        else:  # redacted_thinking: only its provider can read it
            thinking.append(block.model_dump())
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text) or (None if calls else "")}
    if calls:
        out["tool_calls"] = calls
    if thinking:
        out["thinking_blocks"] = thinking
    return out


def _user(blocks: list[Block]) -> list[dict[str, Any]]:
    """Tool results first (each a `tool` message), then the user's text and images as one message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, ToolResultBlock):
            results.append(_tool_result(block, parts))
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": block.data_url()}})
    if parts:
        results.append({"role": "user", "content": parts})
    return results


def _tool_result(block: ToolResultBlock, parts: list[dict[str, Any]]) -> dict[str, Any]:
    if isinstance(block.content, str):
        text = block.content
    else:
        text = "".join(b.text for b in block.content if isinstance(b, TextBlock))
        parts.extend({"type": "image_url", "image_url": {"url": b.data_url()}}
                     for b in block.content if isinstance(b, ImageBlock))
    if block.is_error:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}
