"""One mapping from the error hierarchy to each API's envelope, chosen by the path."""

from __future__ import annotations

import pytest

from server.envelopes import is_anthropic, render, render_http
from server.errors import (
    AuthenticationError,
    GenerationError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    ServiceUnavailableError,
    SlmError,
    UpstreamError,
    UpstreamTimeoutError,
)

CASES: list[tuple[SlmError, int, str]] = [
    (InvalidRequestError("bad", param="max_tokens"), 400, "invalid_request_error"),
    (AuthenticationError("no key"), 401, "authentication_error"),
    (ModelNotFoundError("m"), 404, "not_found_error"),
    (RequestTimeoutError("slow body"), 408, "timeout_error"),
    (RequestTooLargeError("big"), 413, "request_too_large"),
    (RateLimitError("slow down", retry_after=3), 429, "rate_limit_error"),
    (OverloadedError("queue full", retry_after=1), 529, "overloaded_error"),
    (ServiceUnavailableError("no worker", retry_after=2), 503, "overloaded_error"),
    (UpstreamError("provider failed"), 502, "api_error"),
    (UpstreamTimeoutError("provider slow"), 504, "timeout_error"),
    (GenerationError("worker lost"), 500, "api_error"),
]


@pytest.mark.parametrize(("exc", "status", "kind"), CASES)
def test_anthropic_envelope_under_v1_messages(exc: SlmError, status: int, kind: str) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        got_status, body, headers = render(exc, path)
        assert (got_status, body) == (status, {"type": "error", "error": {"type": kind, "message": exc.message}})
        assert headers == exc.headers()  # Retry-After where the error has one


@pytest.mark.parametrize(("exc", "status", "kind"), CASES)
def test_openai_envelope_everywhere_else(exc: SlmError, status: int, kind: str) -> None:
    for path in ("/v1/chat/completions", "/v1/messagesx", "/v1/models", ""):
        assert render(exc, path) == (exc.status, exc.to_body(), exc.headers())


def test_plain_http_errors_and_paths() -> None:
    assert render_http(405, "Method Not Allowed", "/v1/messages") == {
        "type": "error", "error": {"type": "invalid_request_error", "message": "Method Not Allowed"}}
    assert render_http(404, "Not Found", "/v1/nothing")["error"]["type"] == "not_found"
    assert is_anthropic("/v1/messages/") and not is_anthropic("/v1/messages_batch")
