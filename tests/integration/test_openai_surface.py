"""The wider chat surface on the real server: structured outputs, logprobs, n, logit_bias —
each response and chunk validated against the OpenAI spec."""

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

ASK = [{"role": "user", "content": "Describe a cat as JSON with its name and age."}]


def post(server: LiveServer, body: dict[str, Any], path: str = "/v1/chat/completions") -> dict[str, Any]:
    response = httpx.post(server.url + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    assert_valid("CreateChatCompletionResponse" if "chat" in path else "CreateCompletionResponse", data)
    return data


def chunks(server: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    out = [json.loads(f) for f in frames[:-1]]
    for chunk in out:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    return out


def test_json_object_output_always_parses(live_server: LiveServer) -> None:
    """JSON mode as OpenAI defines it: an answer that ends by itself is a JSON object; one cut by
    `max_tokens` says so (`length`), never `stop`. (Which prompts a 135M model loops on depends on the
    CPU's float rounding, so the one that must finish asks for a flat object.)"""
    flat = [{"role": "user", "content": "Give a JSON object with two keys, name and age, for a cat."}]
    for temperature in (0, 1.0):
        body = {"model": "smollm2", "messages": flat, "max_tokens": 120, "temperature": temperature, "seed": 3,
                "response_format": {"type": "json_object"}}
        choice = post(live_server, body)["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    for temperature in (0, 1.0):
        body = {"model": "smollm2", "messages": ASK, "max_tokens": 24, "temperature": temperature, "seed": 3,
                "response_format": {"type": "json_object"}}
        choice = post(live_server, body)["choices"][0]
        content = choice["message"]["content"]
        assert content.lstrip().startswith("{")
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(content), dict)
        else:
            assert choice["finish_reason"] == "length", choice


def test_json_schema_output_validates_against_the_schema(live_server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 30}},
              "required": ["name", "age"], "additionalProperties": False}
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=80, temperature=0.7, seed=1,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "cat", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks(live_server, {
        "model": "smollm2", "messages": ASK, "max_tokens": 80, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "cat", "schema": schema}}}))
    jsonschema.validate(json.loads(streamed), schema)


def test_logprobs_whole_and_streamed(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 6, "temperature": 0, "logprobs": True,
            "top_logprobs": 3}
    choice = post(live_server, body)["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 6
    for entry in content:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy picks the most likely
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    streamed = [e for c in chunks(live_server, body) if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]


def test_n_choices_whole_and_streamed(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 5}
    data = post(live_server, body)
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3, 4]
    assert len({c["message"]["content"] for c in data["choices"]}) > 1, "n choices must be sampled apart"
    lengths = [c["finish_reason"] for c in data["choices"]]
    assert 5 <= data["usage"]["completion_tokens"] <= 5 * 8
    assert data["usage"]["completion_tokens"] == 5 * 8 or "stop" in lengths
    stream = chunks(live_server, {**body, "stream_options": {"include_usage": True}})
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in stream
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert sorted(i for i, _ in finishes) == [0, 1, 2, 3, 4]
    roles = [c["choices"][0]["index"] for c in stream if c["choices"] and c["choices"][0]["delta"].get("role")]
    assert sorted(roles) == [0, 1, 2, 3, 4]
    assert stream[-1]["usage"]["completion_tokens"] <= 5 * 8


def test_logit_bias_bans_and_forces_tokens(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "messages": ASK, "max_tokens": 6, "temperature": 0, "logprobs": True}
    first = post(live_server, body)["choices"][0]["logprobs"]["content"][0]
    banned = post(live_server, {**body, "logit_bias": {str(_token_id(live_server, first["token"])): -100}})
    assert banned["choices"][0]["logprobs"]["content"][0]["token"] != first["token"]


def _token_id(server: LiveServer, token: str) -> int:
    """The id of a token in SmolLM2's vocabulary."""
    import llama_cpp  # the tokenizer of the same GGUF, to name the token by id

    from server.registry import resolve_gguf
    from tests.conftest import REPO, SMOLLM2

    path = resolve_gguf(SMOLLM2, registry_dir=REPO, model_dirs=[])
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    ids = llm.tokenize(token.encode(), add_bos=False, special=False)
    assert len(ids) == 1, ids
    return int(ids[0])


def test_legacy_completion_logprobs(live_server: LiveServer) -> None:
    data = post(live_server, {"model": "smollm2", "prompt": "One, two,", "max_tokens": 4, "temperature": 0,
                              "logprobs": 2}, "/v1/completions")
    lp = data["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 4
    assert all(len(t) <= 2 for t in lp["top_logprobs"])


def test_penalties_and_extension_samplers_are_honoured(live_server: LiveServer) -> None:
    base = {"model": "smollm2", "prompt": "cat cat cat cat cat cat cat cat", "max_tokens": 24, "temperature": 0}

    def text(extra: dict[str, Any]) -> str:
        return str(post(live_server, {**base, **extra}, "/v1/completions")["choices"][0]["text"])

    plain = text({})
    for extra in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repeat_penalty": 1.8}):
        assert text(extra) != plain, extra
    assert text({"temperature": 1.5, "seed": 9, "top_k": 1}) == plain, "top_k=1 is greedy"
    assert text({"temperature": 1.5, "seed": 9, "min_p": 1.0}) == plain, "min_p=1 is greedy"
