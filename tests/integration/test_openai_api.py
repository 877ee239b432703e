"""The real server (embedded Redis, real SmolLM2 and Gemma workers) driven by the official client
and by raw HTTP, every body validated against the OpenAI spec."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer
from tests.openapi import assert_valid

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "Name three colours."}]


def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def sse_events(response: httpx.Response) -> list[str]:
    data = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data.append(line[len("data: "):])
        else:
            assert line == "" or line.startswith(":"), f"unexpected SSE line {line!r}"
    return data


def stream_raw(server: LiveServer, body: dict[str, Any], path: str = "/v1/chat/completions") -> list[str]:
    with httpx.stream("POST", server.url + path, json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def test_chat_with_the_official_client(live_server: LiveServer) -> None:
    reply = client(live_server).chat.completions.create(model="smollm2", messages=HELLO, max_tokens=12,
                                                        temperature=0)  # type: ignore[arg-type]
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.model == "smollm2"


def test_raw_chat_body_matches_the_spec_and_carries_timings(live_server: LiveServer) -> None:
    response = httpx.post(live_server.url + "/v1/chat/completions", timeout=120,
                          json={"model": "smollm2-135m", "messages": HELLO, "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert response.headers["x-slm-model"] == "smollm2"
    assert response.headers["x-request-id"].startswith("req_")
    t = body["timings"]
    assert t["prompt_ms"] > 0 and t["predicted_ms"] >= 0
    assert t["total_ms"] == pytest.approx(t["prompt_ms"] + t["predicted_ms"], abs=0.01)
    assert t["prompt_n"] == body["usage"]["prompt_tokens"]


def test_stream_follows_the_contract(live_server: LiveServer) -> None:
    events = stream_raw(live_server, {"model": "smollm2", "messages": HELLO, "max_tokens": 10, "temperature": 0,
                                      "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunk["usage"] is None
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and chunks[-1]["choices"][0]["finish_reason"] == finishes[0]


def test_stream_usage_chunk_only_when_asked(live_server: LiveServer) -> None:
    events = stream_raw(live_server, {"model": "smollm2", "messages": HELLO, "max_tokens": 6, "stream": True,
                                      "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in events[:-1]]
    usage_chunks = [c for c in chunks if c["usage"] is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] <= 6
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_temperature_zero_gives_the_same_text_streamed_or_not(live_server: LiveServer) -> None:
    c = client(live_server)
    kwargs: dict[str, Any] = {"model": "smollm2", "messages": HELLO, "max_tokens": 24, "temperature": 0}
    whole = c.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in c.chat.completions.create(stream=True,
                                                                                                   **kwargs))
    assert whole and whole == streamed


def test_tokens_arrive_as_they_are_generated(live_server: LiveServer) -> None:
    events = stream_raw(live_server, {"model": "smollm2", "messages": HELLO, "max_tokens": 40, "temperature": 0,
                                      "stream": True})
    content_chunks = [e for e in events[:-1] if json.loads(e)["choices"][0]["delta"].get("content")]
    assert len(content_chunks) >= 3, "the answer came in one piece, not streamed"


def test_text_parts_system_stop_seed_and_max_completion_tokens(live_server: LiveServer) -> None:
    c = client(live_server)
    messages: Any = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Count: one, two, three, four,"},
                                     {"type": "text", "text": " five."}]},
    ]
    reply = c.chat.completions.create(model="smollm2", messages=messages, max_completion_tokens=5, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens <= 5
    full = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=30, temperature=0)
    text = full.choices[0].message.content or ""
    assert len(text) > 4
    stop = text[2:5]
    cut = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    seeded = [c.chat.completions.create(model="smollm2", messages=messages, max_tokens=12, temperature=0.9, seed=7)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_second_model_serves_too(live_server: LiveServer) -> None:
    reply = client(live_server).completions.create(model="gemma3-270m", prompt="The capital of France is",
                                                   max_tokens=6, temperature=0)
    assert reply.choices[0].text
    assert reply.model == "gemma3-270m"


def test_legacy_completions_match_the_spec(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}
    response = httpx.post(live_server.url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200
    assert_valid("CreateCompletionResponse", response.json())
    events = stream_raw(live_server, {**body, "stream": True}, "/v1/completions")
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
    assert text == response.json()["choices"][0]["text"]


def test_models_list_and_retrieve(live_server: LiveServer) -> None:
    listing = httpx.get(live_server.url + "/v1/models", timeout=10).json()
    assert_valid("ListModelsResponse", listing)
    ids = {m["id"] for m in listing["data"]}
    assert {"smollm2", "smollm2-135m", "gemma3-270m"} <= ids
    model = httpx.get(live_server.url + "/v1/models/smollm2", timeout=10).json()
    assert_valid("Model", model)
    assert client(live_server).models.retrieve("gemma3-270m").id == "gemma3-270m"
    with pytest.raises(openai.NotFoundError):
        client(live_server).models.retrieve("no-such-model")


def test_health_and_ready(live_server: LiveServer) -> None:
    assert httpx.get(live_server.url + "/health", timeout=5).json() == {"status": "ok"}
    ready = httpx.get(live_server.url + "/ready", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["workers"] == {"smollm2": 1, "gemma3-270m": 1}


BAD_REQUESTS = [
    ({"model": "smollm2"}, "messages"),
    ({"model": "smollm2", "messages": []}, "messages"),
    ({"model": "smollm2", "messages": "hi"}, "messages"),
    ({"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ({"model": "smollm2", "messages": HELLO, "temperature": 3}, "temperature"),
    ({"model": "smollm2", "messages": HELLO, "top_p": 1.5}, "top_p"),
    ({"model": "smollm2", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"model": "smollm2", "messages": HELLO, "presence_penalty": -3}, "presence_penalty"),
    ({"model": "smollm2", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "smollm2", "messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "smollm2", "messages": HELLO, "n": 0}, "n"),
    ({"model": "smollm2", "messages": HELLO, "n": 500}, "n"),
    ({"model": "smollm2", "messages": HELLO, "logit_bias": {"one": 5}}, "logit_bias"),
    ({"model": "smollm2", "messages": HELLO, "logit_bias": {"1": 500}}, "logit_bias"),
    ({"model": "smollm2", "messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"model": "smollm2", "messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
    ({"model": "smollm2", "messages": HELLO, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": "smollm2", "messages": HELLO, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"model": "smollm2", "messages": HELLO, "tools": [{"type": "function"}]}, "tools.0.function"),
    ({"model": "smollm2", "messages": HELLO, "functions": [{"name": "f"}]}, "functions"),
    ({"messages": HELLO}, "model"),
    ({"model": "smollm2", "messages": HELLO, "max_tokens": True}, "max_tokens"),
    ({"model": "smollm2", "messages": HELLO, "max_tokens": "64"}, "max_tokens"),
    ({"model": "smollm2", "messages": HELLO, "temperature": "0.5"}, "temperature"),
    ({"model": "smollm2", "messages": HELLO, "stream": "yes"}, "stream"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_bad_parameters_get_400_naming_them(live_server: LiveServer, body: dict[str, Any], param: str) -> None:
    response = httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_invalid_json_is_400_not_422(live_server: LiveServer) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        response = httpx.post(live_server.url + "/v1/chat/completions", content=raw, timeout=10,
                              headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert_valid("ErrorResponse", response.json())


def test_unknown_model_is_404(live_server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(live_server).chat.completions.create(model="gpt-imaginary", messages=HELLO)  # type: ignore[arg-type]
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"


def test_prompt_longer_than_the_context_is_400_before_any_stream_byte(live_server: LiveServer) -> None:
    long = [{"role": "user", "content": "word " * 1500}]
    for stream in (False, True):
        response = httpx.post(live_server.url + "/v1/chat/completions", timeout=60,
                              json={"model": "smollm2", "messages": long, "stream": stream})
        assert response.status_code == 400
        assert_valid("ErrorResponse", response.json())
        assert response.json()["error"]["code"] == "context_length_exceeded"
    too_many = httpx.post(live_server.url + "/v1/chat/completions", timeout=60,
                          json={"model": "smollm2", "messages": HELLO, "max_tokens": 5000})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"


def test_bad_input_does_not_disturb_other_requests(live_server: LiveServer) -> None:
    c = client(live_server)
    stream = c.chat.completions.create(model="smollm2", messages=HELLO, max_tokens=20, temperature=0,  # type: ignore[arg-type]
                                       stream=True)
    first = next(iter(stream))
    for body, _ in BAD_REQUESTS:
        httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=30)
    rest = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest
    assert httpx.get(live_server.url + "/health", timeout=5).status_code == 200
