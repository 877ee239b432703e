"""A hosted model gets the whole request the client sent and the client gets the whole answer back,
through a real gateway, the official `openai` client and litellm, to a fake upstream that records
what it received.

Checked on the upstream's side: each parameter, content parts intact, fields beyond the spec at the
top level of the JSON (litellm's `extra_body`), none steering litellm, no provider setting from the
client. On the client's side: several choices, tool calls (whole, and streamed as OpenAI streams them),
logprobs, reasoning text, usage details, an agent loop; every body and chunk valid against the spec.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from server.registry import parse_registry
from server.settings import Settings
from tests.backends.conftest import CANARY_KEY, KEY_ENV
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.gateway_thread import running_gateway
from tests.openapi import assert_valid

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
IMAGE = "data:image/png;base64,iVBORw0KGgo="
PARTS: Any = [
    {"type": "text", "text": "What is in these?"},
    {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERg=="}},
]
HOSTED = {"backend": "hosted", "litellm_model": "openai/fake-model", "api_key_env": KEY_ENV, "retries": 0}


@pytest.fixture
def gateway(redis_url: str, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A gateway with `big` (hosted, at the fake), `small` (local, no worker) and routers over both."""
    monkeypatch.setenv(KEY_ENV, CANARY_KEY)
    models = {"big": {**HOSTED, "api_base": fake.api_base}, "small": {"gguf": "absent.gguf"},
              "auto": {"backend": "router", "targets": ["small", "big"], "escalate": [{"images": True, "to": "big"}]},
              "spill": {"backend": "router", "targets": ["small", "big"]}}
    with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), parse_registry({"models": models})) as url:
        yield url


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def whole(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.model_dump(exclude_unset=True)
    assert_valid("CreateChatCompletionResponse", body)
    return body


def streamed(url: str, **request: Any) -> list[dict[str, Any]]:
    """The chunks of a streamed chat answer, each checked against the spec."""
    with httpx.stream("POST", url + "/v1/chat/completions", json={**request, "stream": True}, timeout=30) as response:
        assert response.status_code == 200, response.read()
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    for chunk in chunks:
        assert "error" not in chunk, chunk
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    return chunks


def test_every_parameter_and_content_part_reaches_the_provider(gateway: str, fake: FakeUpstream) -> None:
    reply = client_of(gateway).chat.completions.create(
        model="big", messages=[{"role": "user", "content": PARTS}], tools=[WEATHER], tool_choice="auto",
        parallel_tool_calls=False, logprobs=True, top_logprobs=1, n=2, logit_bias={"42": 5}, reasoning_effort="low",
        response_format={"type": "json_object"}, modalities=["text"], prediction={"type": "content", "content": "x"},
        service_tier="auto", metadata={"trace": "t-1"}, store=False, user="user-7", max_completion_tokens=40,
        seed=3, stop=["END"],
        extra_body={"top_k": 20, "vendor_knob": {"a": [1, 2]}, "mock_response": "steered by the client",
                    "caching": True, "custom_tags": "x"})
    [seen] = fake.requests
    body = seen.body
    assert body["messages"] == [{"role": "user", "content": PARTS}]
    assert {k: body[k] for k in ("tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "n",
                                 "logit_bias", "reasoning_effort", "response_format", "modalities", "prediction",
                                 "service_tier", "metadata", "store", "user", "max_completion_tokens", "seed",
                                 "stop")} == {
        "tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False, "logprobs": True,
        "top_logprobs": 1, "n": 2, "logit_bias": {"42": 5}, "reasoning_effort": "low",
        "response_format": {"type": "json_object"}, "modalities": ["text"],
        "prediction": {"type": "content", "content": "x"}, "service_tier": "auto", "metadata": {"trace": "t-1"},
        "store": False, "user": "user-7", "max_completion_tokens": 40, "seed": 3, "stop": ["END"]}
    # beyond the spec: at the top level, as the provider sees extra_body; litellm did not act on them
    assert (body["top_k"], body["vendor_knob"], body["mock_response"], body["caching"]) == (
        20, {"a": [1, 2]}, "steered by the client", True)
    assert "extra_body" not in body and body["model"] == "fake-model"
    assert seen.headers["authorization"] == f"Bearer {CANARY_KEY}"  # the registry's key, not the client's
    answer = whole(reply)
    assert [c["message"]["content"] for c in answer["choices"]] == [
        "Hello from the fake upstream", "choice 1: Hello from the fake upstream"]
    for choice in answer["choices"]:
        tokens = [e["token"] for e in choice["logprobs"]["content"]]
        assert "".join(tokens) == choice["message"]["content"]
        assert choice["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] == -0.25


@pytest.mark.parametrize("extra", [{"api_base": "http://evil.example/v1"}, {"api_key": "sk-client"},
                                   {"custom_llm_provider": "anthropic"}])
def test_provider_settings_from_the_client_are_refused_and_never_sent(
        gateway: str, fake: FakeUpstream, extra: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client_of(gateway).chat.completions.create(model="big", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body=extra)
    assert info.value.param == next(iter(extra))
    assert fake.requests == []


def test_an_agent_loop_whole(gateway: str, fake: FakeUpstream) -> None:
    fake.script(Reply.calls(("get_weather", '{"city": "Paris"}')), Reply.ok("It is sunny in Paris."))
    client = client_of(gateway)
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="big", messages=messages, tools=[WEATHER], tool_choice="required")
    body = whole(first)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call == {"id": "call_fake_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages += [choice["message"], {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "clear"}'}]
    final = client.chat.completions.create(model="big", messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "It is sunny in Paris." and final.choices[0].finish_reason == "stop"
    sent = fake.requests[1].body["messages"]
    assert sent[1]["tool_calls"] == [call] and sent[1]["role"] == "assistant"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_fake_0", "content": '{"sky": "clear"}'}


def test_an_agent_loop_streamed(gateway: str, fake: FakeUpstream) -> None:
    fake.script(Reply.calls(("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')))
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    chunks = streamed(gateway, model="big", messages=messages, tools=[WEATHER])
    fragments = [f for c in chunks for choice in c["choices"] for f in choice["delta"].get("tool_calls") or []]
    heads = [f for f in fragments if "id" in f]
    assert [(h["index"], h["id"], h["function"]["name"]) for h in heads] == [
        (0, "call_fake_0", "get_weather"), (1, "call_fake_1", "get_weather")]
    assert all("id" not in f and "name" not in f["function"] for f in fragments if f not in heads)
    assert len(fragments) > len(heads)  # the arguments came in pieces
    args = {i: "".join(f["function"].get("arguments", "") for f in fragments if f["index"] == i) for i in (0, 1)}
    assert args == {0: '{"city": "Paris"}', 1: '{"city": "Rome"}'}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["tool_calls"]
    # the openai client's own stream reader puts the calls back together
    client = client_of(gateway)
    fake.script(Reply.calls(("get_weather", '{"city": "Paris"}')))
    stream = client.chat.completions.create(model="big", messages=messages, tools=[WEATHER], stream=True)
    calls: dict[int, dict[str, str]] = {}
    for chunk in stream:
        for frag in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += frag.id or ""
            entry["name"] += (frag.function.name or "") if frag.function else ""
            entry["arguments"] += (frag.function.arguments or "") if frag.function else ""
    assert calls == {0: {"id": "call_fake_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_fake_0", "type": "function", "function": {"name": "get_weather", "arguments": args[0]}}]},
        {"role": "tool", "tool_call_id": "call_fake_0", "content": "clear"}]
    fake.script(Reply.ok("Sunny in both."))
    final = streamed(gateway, model="big", messages=messages, tools=[WEATHER])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in final if c["choices"]) == "Sunny in both."
    assert fake.requests[-1].body["messages"][2]["tool_call_id"] == "call_fake_0"


def test_reasoning_logprobs_choices_and_usage_details_whole_and_streamed(gateway: str, fake: FakeUpstream) -> None:
    fake.default = Reply.ok("Two words", reasoning="Let me think")
    request: dict[str, Any] = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "n": 2,
                               "logprobs": True, "top_logprobs": 1}
    body = whole(client_of(gateway).chat.completions.create(**request))
    assert [c["message"]["reasoning_content"] for c in body["choices"]] == ["Let me think"] * 2
    assert [c["message"]["content"] for c in body["choices"]] == ["Two words", "choice 1: Two words"]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]
    usage = body["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 2 > 0
    chunks = streamed(gateway, **request, stream_options={"include_usage": True})
    per_choice: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            got = per_choice.setdefault(choice["index"], {"reasoning": "", "content": "", "tokens": "", "finish": ""})
            got["reasoning"] += choice["delta"].get("reasoning_content") or ""
            got["content"] += choice["delta"].get("content") or ""
            got["tokens"] += "".join(e["token"] for e in (choice["logprobs"] or {}).get("content") or [])
            got["finish"] += choice["finish_reason"] or ""
    assert per_choice == {
        0: {"reasoning": "Let me think", "content": "Two words", "tokens": "Two words", "finish": "stop"},
        1: {"reasoning": "Let me think", "content": "choice 1: Two words", "tokens": "choice 1: Two words",
            "finish": "stop"}}
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}


def test_the_provider_reads_the_images(gateway: str, fake: FakeUpstream) -> None:
    fake.default = Reply.describe()
    messages: Any = [{"role": "user", "content": PARTS[:2]}]
    reply = client_of(gateway).chat.completions.create(model="big", messages=messages)
    assert reply.choices[0].message.content == f"I see 1 image(s): {IMAGE}"
    chunks = streamed(gateway, model="big", messages=messages)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        f"I see 1 image(s): {IMAGE}"


def test_a_provider_refusing_a_parameter_is_the_one_that_says_so(gateway: str, fake: FakeUpstream) -> None:
    message = "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    fake.script(Reply.error(400, message, code="unsupported_parameter", type="invalid_request_error",
                            param="reasoning_effort"))
    with pytest.raises(openai.BadRequestError) as info:
        client_of(gateway).chat.completions.create(model="big", messages=[{"role": "user", "content": "hi"}],
                                                   reasoning_effort="high")
    assert info.value.status_code == 400 and info.value.param == "reasoning_effort"
    assert info.value.code == "unsupported_parameter" and message in info.value.message
    assert fake.requests[0].body["reasoning_effort"] == "high"


def test_a_router_escalates_images_and_routers_carry_the_whole_request(gateway: str, fake: FakeUpstream) -> None:
    fake.default = Reply.describe()
    messages: Any = [{"role": "user", "content": PARTS[:2]}]
    response = httpx.post(gateway + "/v1/chat/completions", timeout=30,
                          json={"model": "auto", "messages": messages, "logprobs": True})
    assert response.status_code == 200, response.text
    assert (response.headers["x-slm-model"], response.headers["x-slm-route"]) == ("big", "escalated")
    assert fake.requests[-1].body["messages"] == messages and fake.requests[-1].body["logprobs"] is True
    # a router whose local target cannot serve (it reads no images; it has no worker) hands over everything
    fake.default = Reply.calls(("get_weather", '{"city": "Oslo"}'))
    response = httpx.post(gateway + "/v1/chat/completions", timeout=30, json={
        "model": "spill", "messages": messages, "tools": [WEATHER], "tool_choice": "required", "n": 1})
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-model"] == "big"
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    sent = fake.requests[-1].body
    assert (sent["messages"], sent["tools"], sent["tool_choice"]) == (messages, [WEATHER], "required")


def test_a_local_model_refuses_media_by_part_and_model(gateway: str) -> None:
    response = httpx.post(gateway + "/v1/chat/completions", timeout=30,
                          json={"model": "small", "messages": [{"role": "user", "content": PARTS}]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages.0.content.1"
    assert "The model 'small' does not accept image input" in response.json()["error"]["message"]
    assert_valid("ErrorResponse", response.json())
    response = httpx.post(gateway + "/v1/chat/completions", timeout=30,
                          json={"model": "small", "messages": [{"role": "user", "content": PARTS[2:3]}]})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "messages.0.content.0")
    assert "does not accept audio input" in response.json()["error"]["message"]
    response = httpx.post(gateway + "/v1/chat/completions", timeout=30, json={
        "model": "small", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "low"})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "reasoning_effort")
    assert "not supported by the local model 'small'" in response.json()["error"]["message"]


def test_a_refusal_reaches_the_client_whole_and_streamed(gateway: str, fake: FakeUpstream) -> None:
    fake.default = Reply.ok("", refusal="I can't help with that.")
    request: dict[str, Any] = {"model": "big", "messages": [{"role": "user", "content": "something bad"}]}
    message = whole(client_of(gateway).chat.completions.create(**request))["choices"][0]["message"]
    assert (message["refusal"], message["content"]) == ("I can't help with that.", None)
    chunks = streamed(gateway, **request)
    assert "".join(c["choices"][0]["delta"].get("refusal") or "" for c in chunks if c["choices"]) == \
        "I can't help with that."
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks if c["choices"])
