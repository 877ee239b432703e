"""Anthropic requests into the internal chat request: every field where it goes, refusals renamed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.anthropic.protocol import CountTokensRequest, MessagesRequest
from server.anthropic.translate import to_chat_request
from server.errors import InvalidRequestError

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def chat(**fields: Any) -> dict[str, Any]:
    body = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **fields}
    return to_chat_request(MessagesRequest.model_validate(body)).model_dump(exclude_none=True, by_alias=True)


def test_sampling_fields_and_metadata() -> None:
    out = chat(temperature=0.2, top_p=0.5, top_k=3, stop_sequences=["X", "Y"], metadata={"user_id": "u1"},
               system=[{"type": "text", "text": "A"},
                       {"type": "text", "text": "B", "cache_control": {"type": "ephemeral"}}])
    assert (out["temperature"], out["top_p"], out["top_k"], out["stop"], out["user"], out["max_tokens"]) == (
        0.2, 0.5, 3, ["X", "Y"], "u1", 16)
    assert out["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert out["stream"] is False and "stream_options" not in out


def test_a_stream_asks_for_usage() -> None:
    out = chat(stream=True)
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


def test_blocks_tool_use_and_tool_result() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}, image]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
             "content": [{"type": "text", "text": "down"}, {"type": "image", "source": {"type": "url", "url": "u"}}]},
            {"type": "text", "text": "and now?"}]},
    ]
    out = chat(messages=messages)["messages"]
    assert out[0] == {"role": "user", "content": [
        {"type": "text", "text": "weather?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
    assert out[1]["content"] == "Let me look." and out[1]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"}]
    assert out[1]["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                     "function": {"name": "w", "arguments": json.dumps({"city": "Oslo"})}}]
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: down"}
    assert out[3] == {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}},
                                                  {"type": "text", "text": "and now?"}]}  # the result's image first


@pytest.mark.parametrize(("choice", "internal", "parallel"), [
    ({"type": "auto"}, "auto", None),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
    ({"type": "tool", "name": "w"}, {"type": "function", "function": {"name": "w"}}, None),
    ({"type": "none"}, "none", None),
])
def test_tools_and_tool_choice(choice: dict[str, Any], internal: Any, parallel: bool | None) -> None:
    out = chat(tools=[{"name": "w", "description": "weather", "input_schema": SCHEMA}], tool_choice=choice)
    assert out["tools"] == [{"type": "function", "function": {"name": "w", "description": "weather",
                                                              "parameters": SCHEMA}}]
    assert out["tool_choice"] == internal and out.get("parallel_tool_calls") == parallel


def test_thinking_and_output_config() -> None:
    out = chat(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048},
               output_config={"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}})
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2048} and out["reasoning_effort"] == "low"
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert "thinking" not in chat(thinking={"type": "disabled"})


def test_count_tokens_has_no_sampling() -> None:
    req = CountTokensRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    out = to_chat_request(req)
    assert out.max_tokens is None and out.messages[0].text() == "hi"


def test_internal_refusals_name_the_anthropic_field() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat(stop_sequences=["a", "b", "c", "d", "e"])
    assert caught.value.param == "stop_sequences" and "'stop_sequences'" in caught.value.message
    with pytest.raises(InvalidRequestError) as schema:
        chat(tools=[{"name": "w", "input_schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}])
    assert schema.value.param == "tools.0.input_schema"
