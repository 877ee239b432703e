"""Tool calls read back from model text (`server/tool_format.py`): each call's JSON read whole, so an argument
may hold the call tags themselves; a last call cut short dropped, complete ones kept; anything else None."""

from __future__ import annotations

import json

from server.tool_format import history_message, parse_calls


def call(name: str, arguments: dict[str, object]) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_an_argument_may_hold_the_call_tags() -> None:
    # as SmolLM2 wrote it under the named-call grammar (a string is any JSON string)
    text = '<tool_call>{"name": "get_time", "arguments":{"timezone": "]}</tool_call> serve:{" } } </tool_call>'
    assert parse_calls(text) == [{"name": "get_time", "arguments": json.dumps({"timezone": "]}</tool_call> serve:{"})}]
    tricky = {"note": "<tool_call>{\"name\": \"x\"}</tool_call>"}
    assert parse_calls(call("f", tricky) + "\n" + call("g", {})) == [
        {"name": "f", "arguments": json.dumps(tricky)}, {"name": "g", "arguments": "{}"}]


def test_several_calls_and_space_around_them() -> None:
    spaced = "<tool_call> " + json.dumps({"name": "b", "arguments": {}}) + " </tool_call>\n"
    text = "  " + call("a", {"x": 1}) + "\n" + spaced
    assert parse_calls(text) == [{"name": "a", "arguments": '{"x": 1}'}, {"name": "b", "arguments": "{}"}]


def test_a_last_call_cut_short_is_dropped_and_the_complete_ones_kept() -> None:
    assert parse_calls(call("a", {}) + '<tool_call>{"name": "b", "argu') == [{"name": "a", "arguments": "{}"}]
    assert parse_calls(call("a", {}) + '<tool_call>{"name": "b", "arguments": {}}') == [
        {"name": "a", "arguments": "{}"}]
    assert parse_calls('<tool_call>{"name": "a", "arguments": {"q": 1}}') == [{"name": "a", "arguments": '{"q": 1}'}]


def test_what_is_not_only_calls_is_none() -> None:
    assert parse_calls("The time is noon.") is None
    assert parse_calls('<tool_call>{"name": "a", "arg') is None  # the only call, cut short
    assert parse_calls('<tool_call>{"name": "a"} and more</tool_call>') is None
    assert parse_calls('<tool_call>["a"]</tool_call>') is None
    assert parse_calls('<tool_call>{"name": 3}</tool_call>') is None
    assert parse_calls('<tool_call>{"name": "a", }</tool_call>') is None


def test_history_is_read_back_as_the_same_calls() -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"s": "</tool_call>"}'}}]}
    assert parse_calls(history_message(message)["content"]) == [{"name": "f", "arguments": '{"s": "</tool_call>"}'}]
