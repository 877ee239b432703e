"""Fallbacks through a real gateway: local -> hosted when the local model is full or has no worker,
hosted -> local when the upstream fails or times out, streamed and whole, every body spec-valid."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from server.backends.health import HealthPolicy
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.conftest import SMOLLM2, LiveServer
from tests.openapi import assert_valid
from tests.serving.gateways import FAKE_TEXT, Gateway, gateway_on, held, post

pytestmark = pytest.mark.integration

REGISTRY = f"""
models:
  smollm2:            # the live server's workers; this gateway admits at most 2 queued or running
    gguf: {SMOLLM2}
    n_ctx: 1024
    parallel: 4
    max_queue: 2
    fallbacks: [big]
  ghost:              # no worker ever serves it
    gguf: {SMOLLM2}
    fallbacks: [big]
  big:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: "{{api_base}}"
    api_key_env: {{key_env}}
    timeout: 20
    retries: 0
  flaky:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: "{{api_base}}"
    api_key_env: {{key_env}}
    timeout: 4          # a hang is a 504 after 4 s (long enough for a loaded machine's 500 to come back first)
    retries: 0
    fallbacks: [smollm2]
"""
HI = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def gateway(live_server: LiveServer) -> Iterator[Gateway]:
    # `flaky` fails in one test after another here: its circuit must not open (tests/backends/test_upstream_health.py)
    never_open = HealthPolicy(failures_to_open=1_000)
    with FakeUpstream() as upstream, gateway_on(live_server, REGISTRY, upstream, upstream_health=never_open) as gw:
        yield gw


def check_served(response: Any, body: Any, *, stream: bool, model: str, backend: str, fell_from: str) -> str:
    """The answer is spec-valid and says who served it; returns its text."""
    assert response.status_code == 200, body
    assert response.headers["x-slm-model"] == model
    assert response.headers["x-slm-backend"] == backend
    assert response.headers["x-slm-fallback-from"] == fell_from
    if not stream:
        assert_valid("CreateChatCompletionResponse", body)
        assert body["model"] == model
        return str(body["choices"][0]["message"]["content"])
    for chunk in body:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunk["model"] == model
    assert body[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in body if c["choices"])


def test_a_full_local_queue_falls_back_to_the_hosted_model(gateway: Gateway) -> None:
    gateway.wait_idle("smollm2")
    counted = gateway.metric("slm_fallbacks_total", model="smollm2", to="big", reason="overloaded")
    with held(gateway, "smollm2", 2):
        assert gateway.depth("smollm2") == 2  # at max_queue: the next one would be a 429
        for stream in (False, True):
            response, body = post(gateway, {"model": "smollm2", "messages": HI, "max_tokens": 8, "stream": stream})
            text = check_served(response, body, stream=stream, model="big", backend="hosted", fell_from="smollm2")
            assert text == FAKE_TEXT
        assert gateway.depth("smollm2") == 2, "the refused requests were not enqueued"
    assert gateway.metric("slm_fallbacks_total", model="smollm2", to="big", reason="overloaded") == counted + 2
    gateway.wait_idle("smollm2")


def test_a_local_model_with_no_worker_falls_back_with_the_official_client(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="ghost", messages=HI, max_tokens=8)  # type: ignore[arg-type]
    assert (raw.headers["x-slm-model"], raw.headers["x-slm-fallback-from"]) == ("big", "ghost")
    reply = raw.parse()
    assert reply.model == "big" and reply.choices[0].message.content == FAKE_TEXT
    with client.chat.completions.with_streaming_response.create(
            model="ghost", messages=HI, max_tokens=8, stream=True) as streamed:  # type: ignore[arg-type]
        assert streamed.headers["x-slm-model"] == "big"
        chunks = list(streamed.parse())
    assert {c.model for c in chunks} == {"big"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == FAKE_TEXT
    assert gateway.metric("slm_fallbacks_total", model="ghost", to="big", reason="unavailable") >= 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("reply", "reason"), [
    (Reply.error(500, "the provider had a bad day"), "upstream"),
    (Reply.error(503, "overloaded upstream"), "upstream"),
    (Reply.hang(), "timeout"),
], ids=["500", "503", "timeout"])
def test_a_failing_hosted_model_falls_back_to_the_local_one(gateway: Gateway, reply: Reply, reason: str,
                                                           stream: bool) -> None:
    gateway.wait_idle("smollm2")
    counted = gateway.metric("slm_fallbacks_total", model="flaky", to="smollm2", reason=reason)
    seen = len(gateway.upstream.requests)
    gateway.upstream.script(reply)
    response, body = post(gateway, {"model": "flaky", "messages": HI, "max_tokens": 8, "temperature": 0,
                                    "stream": stream})
    text = check_served(response, body, stream=stream, model="smollm2", backend="local", fell_from="flaky")
    assert text and text != FAKE_TEXT
    assert len(gateway.upstream.requests) == seen + 1  # the upstream was tried once (retries: 0)
    assert gateway.metric("slm_fallbacks_total", model="flaky", to="smollm2", reason=reason) == counted + 1


def test_when_every_candidate_fails_the_client_hears_the_first_failure(gateway: Gateway) -> None:
    gateway.upstream.script(Reply.error(503, "down too"))
    response, body = post(gateway, {"model": "ghost", "messages": HI})
    assert response.status_code == 503 and body["error"]["code"] == "no_worker"
    assert "retry-after" in response.headers
    assert_valid("ErrorResponse", body)


def test_a_request_the_named_model_refuses_is_not_passed_on(gateway: Gateway) -> None:
    """The provider refuses a parameter (the gateway passes everything on): its 400 is the client's answer."""
    seen = len(gateway.upstream.requests)
    gateway.upstream.script(Reply.error(400, "logit_bias is not supported by this model", type="invalid_request_error",
                                        param="logit_bias", code="unsupported_parameter"))
    response, body = post(gateway, {"model": "flaky", "messages": HI, "logit_bias": {"42": 5}})
    assert response.status_code == 400 and body["error"]["param"] == "logit_bias"
    assert "x-slm-fallback-from" not in response.headers
    assert_valid("ErrorResponse", body)
    assert len(gateway.upstream.requests) == seen + 1
    assert gateway.upstream.requests[-1].body["logit_bias"] == {"42": 5}
