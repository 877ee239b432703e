"""Input items into stored item resources and chat messages; refusals name where they are."""

from __future__ import annotations

from typing import Any

import pytest

from server.errors import InvalidRequestError
from server.protocol_responses import ResponsesRequest
from server.responses.items import chat_messages, read_input
from server.responses.translate import chat_request, response_format, responses_param
from tests.openapi import assert_valid


def refused(call: Any, *args: Any, **kwargs: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_a_string_is_one_user_message() -> None:
    [item] = read_input("Name a colour.")
    assert item["role"] == "user" and item["content"] == [{"type": "input_text", "text": "Name a colour."}]
    assert item["id"].startswith("msg_")
    assert_valid("ItemResource", item)
    assert chat_messages([item]) == [{"role": "user", "content": "Name a colour."}]


def test_a_tool_loop_becomes_assistant_tool_calls_and_tool_messages() -> None:
    items = read_input([
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": '{"city": "Bergen"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "rain"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "sun"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Rain and sun."}]},
    ])
    for item in items:
        assert_valid("ItemResource", item)
    messages = chat_messages(items)
    assert [m["role"] for m in messages] == ["developer", "user", "assistant", "tool", "tool", "assistant"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["call_1", "call_2"]
    assert messages[2]["content"] is None
    assert messages[4] == {"role": "tool", "tool_call_id": "call_2", "content": "sun"}
    assert messages[5] == {"role": "assistant", "content": "Rain and sun."}


def test_an_image_part_becomes_a_chat_image_part() -> None:
    [item] = read_input([{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}])
    [message] = chat_messages([item])
    assert message["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                        "detail": "low"}}


@pytest.mark.parametrize(("value", "param"), [
    ([{"type": "web_search_call", "id": "ws_1"}], "input[0].type"),
    ([{"role": "tool", "content": "x"}], "input[0].role"),
    ([{"role": "user", "content": 5}], "input[0].content"),
    ([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}], "input[0].content[0].file_id"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}], "input[0].arguments"),
    ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
])
def test_malformed_items_are_refused_naming_where(value: list[dict[str, Any]], param: str) -> None:
    assert refused(read_input, value).param == param


def test_built_in_tools_and_unknown_fields_are_refused_by_name() -> None:
    def build(**fields: Any) -> dict[str, Any]:
        req = ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})
        return chat_request(req, read_input(req.input))

    assert refused(build, tools=[{"type": "function", "name": "f"}, {"type": "web_search"}]).param == "tools[1].type"
    assert refused(build, tools=[{"type": "function", "name": "f", "extra": 1}]).param == "tools[0].extra"
    assert refused(build, tool_choice={"type": "file_search"}).param == "tool_choice"
    assert refused(build, text={"verbosity": "high"}).param == "text.verbosity"
    assert refused(build, text={"format": {"type": "xml"}}).param == "text.format.type"
    body = build(tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
                 tool_choice={"type": "function", "name": "f"}, instructions="Be brief.", max_output_tokens=9,
                 reasoning={"effort": "low"})
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                               "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_completion_tokens"] == 9 and body["reasoning_effort"] == "low"


def test_unserved_parameters_are_refused_by_name() -> None:
    for name, value in (("conversation", "conv_1"), ("include", ["reasoning.encrypted_content"]),
                        ("prompt", {"id": "pmpt_1"}), ("top_logprobs", 3), ("api_base", "http://x"),
                        ("moderation", {"model": "omni"}), ("prompt_cache_options", {"ttl": "24h"})):
        req = ResponsesRequest.model_validate({"model": "m", "input": "hi", name: value})
        assert refused(req.refuse_unsupported).param == name
    req = ResponsesRequest.model_validate({"model": "m"})
    assert refused(req.refuse_unsupported).param == "input"
    req = ResponsesRequest.model_validate({"model": "m", "input": "x", "reasoning": {"summary": "auto"}})
    assert refused(req.refuse_unsupported).param == "reasoning.summary"


def test_json_schema_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    assert response_format({"format": {"type": "json_schema", "name": "c", "schema": schema, "strict": True}}) == {
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}}
    assert response_format({"format": {"type": "text"}}) is None


def test_chat_parameter_names_become_responses_names() -> None:
    assert responses_param("messages.3.content.0") == "input"
    assert responses_param("tools.2.function.parameters") == "tools[2].parameters"
    assert responses_param("response_format.json_schema.schema") == "text.format.schema"
    assert responses_param("max_completion_tokens") == "max_output_tokens"
    assert responses_param("max_tokens") == "max_output_tokens"  # a worker's "no room for them" names it so
    assert responses_param("reasoning_effort") == "reasoning.effort"
    assert responses_param("model") == "model"
