"""Upstream failures become our errors (status, code, Retry-After) and the provider key never leaks."""

from __future__ import annotations

import json
import logging
import socket
import time
from email.utils import formatdate

import httpx
import pytest
from prometheus_client import generate_latest

from server.backends.hosted import HostedBackend, HostedParams
from server.backends.upstream import load_litellm, map_upstream_error, scrub
from server.errors import (
    ContextLengthError,
    InvalidRequestError,
    RateLimitError,
    SlmError,
    UpstreamError,
    UpstreamTimeoutError,
)
from server.registry import parse_registry
from server.settings import Settings
from tests.backends.conftest import CANARY_KEY, KEY_ENV, MakeBackend
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.gateway_thread import running_gateway


async def failure_of(backend: HostedBackend, endpoint: str = "chat") -> SlmError:
    if endpoint == "chat":
        gen = backend.generation("chat", HostedParams(), messages=[{"role": "user", "content": "hi"}])
    else:
        gen = backend.generation("completions", HostedParams(), prompt="hi")
    with pytest.raises(SlmError) as info:
        await gen.start()
        _ = [text async for text in gen.deltas()]
    await gen.close()
    assert backend.in_flight == 0
    return info.value


def errors_counted(backend: HostedBackend, code: str) -> float:
    labels = {"model": "big", "provider": "openai", "code": code}
    return backend.metrics.registry.get_sample_value("slm_upstream_errors_total", labels) or 0.0


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_upstream_429_stays_429_with_its_retry_after(
        make_backend: MakeBackend, fake: FakeUpstream, endpoint: str) -> None:
    fake.script(Reply.error(429, "Rate limit reached for requests", code="rate_limit_exceeded", type="requests",
                            headers={"Retry-After": "7"}))
    backend = make_backend()
    error = await failure_of(backend, endpoint)
    assert isinstance(error, RateLimitError)
    assert error.status == 429 and error.headers() == {"Retry-After": "7"}
    assert "Rate limit reached for requests" in error.message
    assert errors_counted(backend, "429") == 1


@pytest.mark.parametrize("status", [500, 503])
async def test_upstream_5xx_is_a_502(make_backend: MakeBackend, fake: FakeUpstream, status: int) -> None:
    fake.script(Reply.error(status, "the provider had a bad day"))
    backend = make_backend()
    error = await failure_of(backend)
    assert isinstance(error, UpstreamError)
    assert error.status == 502 and error.code == "upstream_failed"
    assert error.to_body()["error"]["type"] == "upstream_error"
    assert errors_counted(backend, str(status)) == 1


async def test_context_too_long_upstream_is_a_400_context_length_exceeded(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
    fake.script(Reply.error(400, message, code="context_length_exceeded", type="invalid_request_error",
                            param="messages"))
    error = await failure_of(make_backend())
    assert isinstance(error, ContextLengthError)
    assert error.to_body() == {"error": {"message": message, "type": "invalid_request_error", "param": "messages",
                                         "code": "context_length_exceeded"}}


async def test_another_upstream_400_passes_through_as_400(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.error(400, "'temperature' is out of range", code="invalid_value", type="invalid_request_error",
                            param="temperature"))
    error = await failure_of(make_backend())
    assert type(error) is InvalidRequestError
    assert (error.status, error.param, error.code) == (400, "temperature", "invalid_value")
    assert error.message == "'temperature' is out of range"


async def test_an_upstream_that_never_answers_is_a_504(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.hang())
    backend = make_backend(timeout=0.3, retries=2)
    started = time.monotonic()
    error = await failure_of(backend)
    assert isinstance(error, UpstreamTimeoutError)
    assert error.status == 504 and "0.3s" in error.message
    assert time.monotonic() - started < 3.0
    assert len(fake.requests) == 1  # the deadline is spent: no retry
    assert errors_counted(backend, "timeout") == 1


async def test_an_unreachable_upstream_is_a_502_and_is_retried(make_backend: MakeBackend) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    backend = make_backend(api_base=f"http://127.0.0.1:{closed_port}/v1", retries=1)
    error = await failure_of(backend)
    assert isinstance(error, UpstreamError)
    assert error.status == 502 and error.code == "upstream_unreachable"
    assert errors_counted(backend, "connection") == 2


async def test_a_rejected_key_is_our_problem_not_the_clients(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.error(401, "Incorrect API key provided", code="invalid_api_key"))
    error = await failure_of(make_backend(retries=2))
    assert (error.status, error.code) == (502, "upstream_auth_failed")
    assert len(fake.requests) == 1


async def test_a_missing_key_variable_fails_before_calling_and_names_only_the_variable(
        make_backend: MakeBackend, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend()
    monkeypatch.delenv(KEY_ENV)
    assert backend.problems() == [f"hosted model 'big': the environment variable {KEY_ENV} is not set"]
    error = await failure_of(backend)
    assert (error.status, error.code) == (502, "upstream_misconfigured") and KEY_ENV in error.message
    assert fake.requests == []


async def test_the_key_never_appears_in_errors_logs_metrics_or_output(
        make_backend: MakeBackend, fake: FakeUpstream, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"Incorrect API key provided: {CANARY_KEY}. Authorization: Bearer {CANARY_KEY}"
    fake.script(
        Reply.error(401, echo, code="invalid_api_key"),
        Reply.error(400, echo, code="invalid_request", param="messages"),
        Reply.error(400, echo, code="context_length_exceeded", param="messages"),
        Reply.error(429, echo, headers={"Retry-After": "1"}),
        Reply.error(500, echo),
        Reply.error(503, echo),
    )
    backend = make_backend()
    errors = [await failure_of(backend) for _ in range(6)]
    assert [e.status for e in errors] == [502, 400, 400, 429, 502, 502]
    assert len(fake.requests) == 6 and all(r.headers["authorization"].endswith(CANARY_KEY) for r in fake.requests)
    texts = [json.dumps(e.to_body()) + str(e) + repr(e) for e in errors]
    assert any("[redacted]" in t for t in texts)  # the echoed key was there, and was scrubbed
    out, err = capfd.readouterr()
    for where, text in [("errors", "\n".join(texts)), ("logs", caplog.text), ("stdout", out), ("stderr", err),
                        ("metrics", generate_latest(backend.metrics.registry).decode())]:
        assert CANARY_KEY not in text, f"the key leaked into {where}"
        assert CANARY_KEY[4:20] not in text, f"part of the key leaked into {where}"
    assert "upstream failure" in caplog.text  # the logs did record the failures


def test_scrub_removes_the_key_and_anything_shaped_like_a_token() -> None:
    text = f"key {CANARY_KEY} header Authorization: Bearer abc.def-123 other sk-proj-AAAAbbbbCCCC1234 ok"
    cleaned = scrub(text, (CANARY_KEY,))
    assert CANARY_KEY not in cleaned and "abc.def-123" not in cleaned and "sk-proj-AAAA" not in cleaned
    assert cleaned.startswith("key [redacted] header Authorization: Bearer [redacted]") and cleaned.endswith(" ok")


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "2500", "retry-after": "9"}, "2"),
    ({"retry-after": "12"}, "12"),
    ({"retry-after": "HTTP-DATE+30"}, "30"),
    ({}, "1"),
])
def test_retry_after_is_read_in_each_form(headers: dict[str, str], expected: str) -> None:
    litellm = load_litellm()
    exc = litellm.RateLimitError("slow down", llm_provider="openai", model="openai/x")
    if headers.get("retry-after") == "HTTP-DATE+30":
        headers = {"retry-after": formatdate(time.time() + 30, usegmt=True)}
    exc.litellm_response_headers = headers
    failure = map_upstream_error(exc, model="big", timeout=5.0, param="messages")
    assert isinstance(failure.error, RateLimitError)
    assert abs(int(failure.error.headers()["Retry-After"]) - int(expected)) <= 1
    assert not failure.retryable


def test_unknown_exceptions_are_a_502_without_their_text() -> None:
    failure = map_upstream_error(ValueError(f"boom {CANARY_KEY}"), model="big", timeout=5.0, param="messages")
    assert (failure.error.status, failure.label, failure.retryable) == (502, "unknown", False)
    assert "boom" not in failure.error.message


def key_pieces(key: str) -> set[str]:
    """Every 8 characters of the key in a row, forwards and reversed, lower-cased."""
    folded = key.lower()
    return {s[i:i + 8] for s in (folded, folded[::-1]) for i in range(len(s) - 7)}


def assert_no_piece_of(key: str, text: str, where: str) -> None:
    found = sorted(p for p in key_pieces(key) if p in text.lower())
    assert not found, f"pieces of the key leaked into {where}: {found}"


OTHER_SECRET = "Xq7LmN2pR9sT4vW8yZ3bC6dF"  # not the provider key, and not sk-/bearer shaped
TRANSFORMED = (f"upper {CANARY_KEY.upper()}; lower {CANARY_KEY.lower()}; reversed {CANARY_KEY[::-1]}; "
               f"partial ...{CANARY_KEY[9:19]}...; tail {CANARY_KEY[-8:]}; other token {OTHER_SECRET}")


async def test_transformed_copies_of_the_key_and_secret_shaped_tokens_never_reach_clients_or_logs(
        make_backend: MakeBackend, fake: FakeUpstream, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    fake.script(
        Reply.error(400, TRANSFORMED, code="invalid_request", param="messages"),
        Reply.error(400, TRANSFORMED, code="context_length_exceeded", param="messages"),
        Reply.error(429, TRANSFORMED, headers={"Retry-After": "1"}),
        Reply.error(401, TRANSFORMED, code="invalid_api_key"),
        Reply.error(500, TRANSFORMED),
    )
    backend = make_backend()
    errors = [await failure_of(backend) for _ in range(5)]
    assert [e.status for e in errors] == [400, 400, 429, 502, 502]
    texts = "\n".join(json.dumps(e.to_body()) + str(e) + repr(e) for e in errors)
    assert texts.count("[redacted]") >= 6 * 3  # each copy was there, and was scrubbed (two 400s and a 429)
    assert "upper" in texts and "reversed" in texts  # the rest of the upstream's message still reached the client
    out, err = capfd.readouterr()
    for where, text in [("errors", texts), ("logs", caplog.text), ("stdout", out), ("stderr", err)]:
        assert_no_piece_of(CANARY_KEY, text, where)
        assert OTHER_SECRET not in text, f"a secret-shaped token reached {where}"


def test_a_real_gateway_answers_an_upstream_400_without_copies_of_its_key(
        redis_url: str, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY_KEY)
    fake.script(Reply.error(400, TRANSFORMED, code="invalid_request", param="messages"))
    models = {"big": {"backend": "hosted", "litellm_model": "openai/fake-model", "api_base": fake.api_base,
                      "api_key_env": KEY_ENV, "retries": 0}}
    with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), parse_registry({"models": models})) as url:
        response = httpx.post(url + "/v1/chat/completions", timeout=30,
                              json={"model": "big", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and "[redacted]" in error["message"]
    assert fake.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"  # the key was the real one
    out, err = capfd.readouterr()
    for where, text in [("the answer", response.text), ("the gateway's output", out + err)]:
        assert_no_piece_of(CANARY_KEY, text, where)
        assert OTHER_SECRET not in text


@pytest.mark.parametrize("kept", [
    "The model gpt-4o-mini-2024-07-18 does not support 'logprobs'.",
    "claude-3-5-sonnet-20241022: max_tokens must be at most 8192",
    "See https://platform.openai.com/docs/guides/error-codes/api-errors for internationalization_details.",
    "'temperature' is out of range",
])
def test_scrub_keeps_ordinary_upstream_text(kept: str) -> None:
    assert scrub(kept, (CANARY_KEY,)) == kept


@pytest.mark.parametrize("secret", [
    "Xq7LmN2pR9sT4vW8yZ3bC6dF",  # mixed-case base62
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # base64 with slashes
    "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # a lower-case hex secret
])
def test_scrub_strips_secret_shaped_tokens_it_was_not_told_about(secret: str) -> None:
    assert scrub(f"upstream said: token {secret} is invalid") == "upstream said: token [redacted] is invalid"


def test_scrub_finds_short_keys_whole_in_any_case_and_reversed() -> None:
    assert scrub("a AbC123x b x321CbA c abc123X d", ("AbC123x",)) == "a [redacted] b [redacted] c [redacted] d"
