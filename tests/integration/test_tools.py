"""Function calling on the real model: calls are well-formed and follow each function's schema."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import LiveServer
from tests.openapi import assert_valid

pytestmark = pytest.mark.integration

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}}, "required": ["timezone"]}
TOOLS: list[Any] = [
    {"type": "function",
     "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a timezone", "parameters": TIME}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def post(server: LiveServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def check_calls(calls: list[dict[str, Any]]) -> None:
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


@pytest.mark.parametrize("temperature", [0, 1.2])
def test_required_gives_well_formed_calls(live_server: LiveServer, temperature: float) -> None:
    response = post(live_server, {"model": "smollm2", "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                                  "temperature": temperature, "seed": 5, "max_tokens": 200})
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    check_calls(choice["message"]["tool_calls"])


def test_named_function_is_the_one_called(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="smollm2", messages=ASK, tools=TOOLS, max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = reply.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"] * len(calls) and calls  # type: ignore[union-attr]
    check_calls([c.model_dump() for c in calls])


def test_tool_calls_stream_as_deltas(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 120,
            "temperature": 0, "stream": True, "parallel_tool_calls": False}
    with httpx.stream("POST", live_server.url + "/v1/chat/completions", json=body, timeout=120) as response:
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert not [c for c in chunks if "error" in c], frames[-2]  # e.g. worker_lost: a running job taken again
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    assert len(deltas) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["tool_calls"]
    check_calls([{k: v for k, v in deltas[0].items() if k != "index"}])
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)


def test_auto_answers_or_calls_consistently(live_server: LiveServer) -> None:
    for ask in (ASK, [{"role": "user", "content": "Say hello."}]):
        response = post(live_server, {"model": "smollm2", "messages": ask, "tools": TOOLS, "max_tokens": 80,
                                      "temperature": 0})
        body = response.json()
        assert_valid("CreateChatCompletionResponse", body)
        choice = body["choices"][0]
        if choice["message"].get("tool_calls"):
            assert choice["finish_reason"] == "tool_calls"
            check_calls(choice["message"]["tool_calls"])
        else:
            assert choice["message"]["content"] and "<tool_call>" not in choice["message"]["content"]


def test_tool_results_round_trip(live_server: LiveServer) -> None:
    messages = [*ASK,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "clear"}'}]
    response = post(live_server, {"model": "smollm2", "messages": messages, "tools": TOOLS, "tool_choice": "none",
                                  "max_tokens": 30, "temperature": 0})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "tools.0.function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
])
def test_malformed_tools_are_400(live_server: LiveServer, extra: dict[str, Any], param: str) -> None:
    response = post(live_server, {"model": "smollm2", "messages": ASK, "tools": TOOLS, **extra})
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_call_cut_short_by_max_tokens_never_leaks_its_markup(live_server: LiveServer, stream: bool) -> None:
    """Too few tokens for the whole call: the client gets finish_reason "length" and no raw markup."""
    body = {"model": "smollm2", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 8,
            "temperature": 0, "stream": stream}
    if stream:
        with httpx.stream("POST", live_server.url + "/v1/chat/completions", json=body, timeout=120) as response:
            assert response.status_code == 200, response.read()
            frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        for chunk in chunks:
            assert_valid("CreateChatCompletionStreamResponse", chunk)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
        calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    else:
        response = post(live_server, body)
        assert response.status_code == 200, response.text
        assert_valid("CreateChatCompletionResponse", response.json())
        choice = response.json()["choices"][0]
        content = choice["message"]["content"] or ""
        finishes = [choice["finish_reason"]]
        calls = choice["message"].get("tool_calls") or []
    assert finishes == ["length"]
    assert "<tool_call" not in content and "get_weather" not in content and "{" not in content
    for call in calls:  # a call returned despite the cut is a whole one
        json.loads(call["function"]["arguments"])
