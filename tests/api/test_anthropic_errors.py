"""Every error class of `/v1/messages` in Anthropic's envelope, through the official client's exception
types, against a real `serve` (the same server as `test_anthropic_messages`); the server keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.api.conftest import ASK, KEY
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.conftest import LiveServer, start_server, stop_server, tiny_registry, wait_until

pytestmark = pytest.mark.integration


def kind(exc: anthropic.APIStatusError) -> str:
    body: Any = exc.body
    assert isinstance(body, dict) and body["type"] == "error" and set(body["error"]) == {"type", "message"}
    return str(body["error"]["type"])


def post(server: LiveServer, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"x-api-key": KEY, "content-type": "application/json", **headers}
    if isinstance(body, dict):
        return httpx.post(server.url + "/v1/messages", json=body, headers=sent, timeout=60)
    return httpx.post(server.url + "/v1/messages", content=body, headers=sent, timeout=60)


@pytest.mark.parametrize(("body", "named"), [
    ({"model": "tiny", "messages": ASK}, "max_tokens"),
    ({"model": "tiny", "max_tokens": "8", "messages": ASK}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 8, "messages": []}, "messages"),
    ({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
     "messages.0.content.0"),
    ({"model": "tiny", "max_tokens": 8, "messages": [{"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]}, "messages.0"),
    ({"model": "tiny", "max_tokens": 8, "messages": ASK, "temperature": 1.5}, "temperature"),
    ({"model": "tiny", "max_tokens": 8, "messages": ASK, "frequency_penalty": 1}, "frequency_penalty"),
    ({"model": "tiny", "max_tokens": 8, "messages": ASK, "tools": [{"type": "web_search_20250305",
                                                                   "name": "web_search"}]}, "tools.0.type"),
    ({"model": "tiny", "max_tokens": 8, "messages": ASK, "tool_choice": {"type": "any"}}, "tool_choice"),
    ({"model": "tiny", "max_tokens": 8, "messages": ASK, "stop_sequences": ["a", "b", "c", "d", "e"]},
     "stop_sequences"),
    ({"model": "tiny", "max_tokens": 4096, "messages": ASK, "thinking": {"type": "enabled", "budget_tokens": 2048}},
     "thinking"),
])
def test_bad_input_is_a_400_naming_the_field(client: anthropic.Anthropic, body: dict[str, Any], named: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", body=body, cast_to=httpx.Response)
    assert kind(caught.value) == "invalid_request_error"
    assert named in caught.value.message, caught.value.message


def test_bad_json_and_content_type_are_400s_in_the_envelope(server: LiveServer) -> None:
    for response in (post(server, b'{"model": "tiny",'), post(server, b"[]"),
                     post(server, b'{"model": "tiny"}', **{"content-type": "text/plain"})):
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"


def test_oversize_body_is_a_413(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        client.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": "x" * 70_000}])
    assert kind(caught.value) == "request_too_large"


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="claude-nonexistent", max_tokens=8, messages=ASK)
    assert kind(caught.value) == "not_found_error" and "claude-nonexistent" in caught.value.message
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-nonexistent", messages=ASK)


def test_bad_or_missing_key_is_authentication_error(server: LiveServer) -> None:
    wrong = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-wrong-key-000000000000", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model="tiny", max_tokens=8, messages=ASK)
    assert kind(caught.value) == "authentication_error" and "sk-ant-wrong" not in caught.value.message
    body = {"model": "tiny", "max_tokens": 8, "messages": ASK}
    missing = httpx.post(server.url + "/v1/messages", json=body, timeout=30)
    both = post(server, body, authorization=f"Bearer {KEY}")
    for response in (missing, both):
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_openai_routes_keep_their_envelope(server: LiveServer) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", headers={"x-api-key": KEY}, timeout=30,
                          json={"model": "nope", "messages": ASK})
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    assert "type" not in response.json()


def test_upstream_failure_is_api_error(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="dead-hosted", max_tokens=8, messages=ASK)
    assert caught.value.status_code >= 500 and kind(caught.value) in ("api_error", "overloaded_error")


def test_error_mid_stream_is_an_error_event(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.script(Reply.drop_mid_stream("one two three four five six"))
    seen: list[str] = []
    with (pytest.raises(anthropic.APIStatusError) as caught,
          client.messages.stream(model="big-hosted", max_tokens=50, messages=ASK) as stream):
        seen.extend(event.type for event in stream)
    assert kind(caught.value) == "api_error" and "message_start" in seen and "message_stop" not in seen


def test_full_queue_is_overloaded_error(server: LiveServer, client: anthropic.Anthropic) -> None:
    """`tiny` holds one request at most (max_queue 1): a second while one runs is 529 overloaded_error."""
    started = threading.Event()
    leave = threading.Event()

    def long_stream() -> None:
        with client.messages.stream(model="tiny", max_tokens=1000, messages=ASK) as stream:
            for event in stream:
                if event.type == "content_block_delta":
                    started.set()
                    leave.wait(60)
                    return

    runner = threading.Thread(target=long_stream)
    runner.start()
    try:
        assert started.wait(60)
        with pytest.raises(anthropic.OverloadedError) as caught:
            client.messages.create(model="tiny", max_tokens=8, messages=ASK)
        assert kind(caught.value) == "overloaded_error" and caught.value.response.headers["retry-after"]
    finally:
        leave.set()
        runner.join(60)

    def queue_empty() -> bool:
        status = httpx.get(server.url + "/v1/status", headers={"x-api-key": KEY}, timeout=10).json()
        return any(m["name"] == "tiny" and m["queue_depth"] == 0 for m in status["models"])

    wait_until(queue_empty, timeout_s=30, what="the cancelled request to leave tiny's queue")
    assert client.messages.create(model="tiny", max_tokens=4, messages=ASK).content  # still serving


def test_metrics_count_messages(server: LiveServer, client: anthropic.Anthropic) -> None:
    client.messages.create(model="tiny", max_tokens=2, messages=ASK)
    with pytest.raises(anthropic.BadRequestError):
        client.post("/v1/messages", body={"model": "tiny", "messages": ASK}, cast_to=httpx.Response)
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines() if line.startswith("slm_requests_total{")
             and 'endpoint="messages"' in line and 'model="tiny"' in line]
    assert any('code="200"' in line for line in lines) and any('code="400"' in line for line in lines), lines


def test_per_key_rate_limit_is_rate_limit_error(tmp_path: Path) -> None:
    """A key over its requests per minute: 429 rate_limit_error with retry-after, before any route runs.
    (A small local model serves the requests within the limit: a hosted one would cost the server litellm's
    import, several times this test's own work.)"""
    limited = start_server(tmp_path, tiny_registry(n_ctx=512, n_threads=2, parallel=1),
                           env={"SLM_API_KEYS": KEY, "SLM_RATE_LIMIT_RPM": "2"})
    try:
        client = anthropic.Anthropic(base_url=limited.url, api_key=KEY, max_retries=0)
        for _ in range(2):
            assert client.messages.create(model="tiny", max_tokens=4, messages=ASK).content
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(model="tiny", max_tokens=4, messages=ASK)
        assert kind(caught.value) == "rate_limit_error"
        assert int(caught.value.response.headers["retry-after"]) >= 1
    finally:
        stop_server(limited)
