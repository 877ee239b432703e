"""Tokens per minute per key: `SecurityMiddleware` + `RateLimiter` on a real Redis, around a tiny app
that reports usage the way the serving layer does (into the `TokenUsage` the middleware leaves in the
request's scope, `usage.of`). The window is the default
minute here, which these tests never see pass (`test_sliding_window` lets short windows pass)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from server.backends.base import Result
from server.embedded_redis import free_port
from server.metrics import Metrics
from server.queue import keys as redis_keys
from server.security import SecurityConfig, SecurityMiddleware, usage
from server.security.api_keys import ApiKeys
from server.security.rate_limits import WINDOW_S, RateLimiter
from server.security.windows import KEY_SLACK_MS
from server.serving.context import RequestContext
from server.serving.tracking import Tracker
from server.settings import Settings
from tests.security.conftest import NamedKeys

pytestmark = pytest.mark.integration

TPM = 1000


def charge(request: Request, tokens: int) -> None:
    """What the route and the service do: the request's usage, from its scope, into its context."""
    RequestContext(usage=usage.of(request.scope)).charge(tokens)


async def spend(request: Request) -> JSONResponse:
    charge(request, int(request.query_params.get("tokens", "0")))
    return JSONResponse({"ok": True})


async def spend_streamed(request: Request) -> StreamingResponse:
    tokens = int(request.query_params["tokens"])

    async def body() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        yield b"data: two\n\n"
        charge(request, tokens)  # as the service does once the last event arrived: in the response's task

    return StreamingResponse(body(), media_type="text/event-stream")


async def boom(request: Request) -> Response:
    charge(request, int(request.query_params["tokens"]))
    raise RuntimeError("the handler failed after using tokens")


APP = Starlette(routes=[Route("/v1/spend", spend, methods=["POST"]), Route("/v1/stream", spend_streamed),
                        Route("/v1/boom", boom)])


@dataclass
class Limited(NamedKeys):
    client: httpx.AsyncClient
    limiter: RateLimiter
    keys: dict[str, str]


@pytest.fixture
async def limited(redis_url: str) -> AsyncIterator[Limited]:
    names = ("a", "b", "c")
    keys = {n: f"sk-{n}-{secrets.token_hex(16)}" for n in names}  # fresh per test: fresh windows
    limiter = RateLimiter(redis_url, rpm=0, concurrency=0, tpm=TPM)
    config = SecurityConfig(ApiKeys.load(",".join(keys.values())), 1 << 20, limiter=limiter)
    transport = httpx.ASGITransport(app=SecurityMiddleware(APP, config), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Limited(client, limiter, keys)
    await limiter.close()


def assert_token_headers(response: httpx.Response, remaining: int) -> None:
    assert response.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert response.headers["x-ratelimit-remaining-tokens"] == str(remaining)
    # until the oldest charge leaves the window: a minute after it was made (these tests take seconds)
    expected = {"0s"} if remaining == TPM else {f"{WINDOW_S - 1:g}s", f"{WINDOW_S:g}s"}
    assert response.headers["x-ratelimit-reset-tokens"] in expected


async def test_usage_is_charged_at_the_end_and_refused_once_the_window_is_spent(limited: Limited) -> None:
    c = limited.client
    first = await c.post("/v1/spend?tokens=600", headers=limited.auth("a"))
    assert first.status_code == 200
    assert_token_headers(first, TPM)  # what was left when it was admitted
    second = await c.post("/v1/spend?tokens=399", headers=limited.auth("a"))
    assert_token_headers(second, TPM - 600)
    third = await c.post("/v1/spend?tokens=5", headers=limited.auth("a"))  # 999 used: one token left, admitted
    assert third.status_code == 200
    assert_token_headers(third, 1)

    refused = await c.post("/v1/spend?tokens=5", headers=limited.auth("a"))  # 1004 used
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "tokens_limit_exceeded"
    assert set(error) == {"message", "type", "param", "code"}
    # under the limit again once the first charge (600) leaves the window: a minute after it was made
    assert int(refused.headers["retry-after"]) in (WINDOW_S - 1, WINDOW_S)
    assert_token_headers(refused, 0)
    assert refused.headers["x-ratelimit-reset-tokens"] == refused.headers["retry-after"] + "s"
    assert limited.keys["a"] not in refused.text

    async with aioredis.Redis.from_url(limited.limiter.target.url) as r:
        kid = limited.key_id("a")
        counted = await r.get(redis_keys.token_window_total(kid))
        assert counted == b"1004", "a refused request must not be charged"
        charges = await r.zrange(redis_keys.token_window(kid), 0, -1)
        assert sorted(int(m.rsplit(b":", 1)[1]) for m in charges) == [5, 399, 600]
        for key in (redis_keys.token_window(kid), redis_keys.token_window_total(kid)):
            assert 0 < await r.pttl(key) <= WINDOW_S * 1000 + KEY_SLACK_MS

    other = await c.post("/v1/spend?tokens=1", headers=limited.auth("b"))  # another key: its own budget
    assert other.status_code == 200
    assert_token_headers(other, TPM)


async def test_a_streamed_response_is_charged_after_its_last_byte(limited: Limited) -> None:
    c = limited.client
    streamed = await c.get("/v1/stream?tokens=700", headers=limited.auth("a"))
    assert streamed.status_code == 200 and streamed.text == "data: one\n\ndata: two\n\n"
    assert_token_headers(streamed, TPM)
    after = await c.post("/v1/spend", headers=limited.auth("a"))
    assert_token_headers(after, TPM - 700)


async def test_tokens_used_by_a_failed_request_still_count(limited: Limited) -> None:
    c = limited.client
    failed = await c.get(f"/v1/boom?tokens={TPM}", headers=limited.auth("c"))
    assert failed.status_code == 500
    refused = await c.post("/v1/spend", headers=limited.auth("c"))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_limit_exceeded"


async def test_without_redis_requests_go_through_unlimited(caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-" + secrets.token_hex(16)
    limiter = RateLimiter(f"redis://127.0.0.1:{free_port()}/0", rpm=0, concurrency=0, tpm=1, timeout_s=0.5)
    config = SecurityConfig(ApiKeys.load(key), 1 << 20, limiter=limiter)
    transport = httpx.ASGITransport(app=SecurityMiddleware(APP, config))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        for _ in range(3):
            response = await c.post("/v1/spend?tokens=50", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 200
            assert "x-ratelimit-limit-tokens" not in response.headers
    await limiter.close()
    assert "rate limits not applied: redis unavailable" in caplog.text


def test_the_tpm_setting_turns_the_limiter_on() -> None:
    def config(**fields: object) -> SecurityConfig:
        return SecurityConfig.from_settings(Settings(redis_url="redis://127.0.0.1:1/0", **fields))  # type: ignore[arg-type]

    on = config(api_keys=SecretStr("sk-" + "x" * 32), rate_limit_tpm=5000).limiter
    assert on is not None and on.tpm == 5000 and on.rpm == 0 and on.concurrency == 0
    assert on.windows.window_s == WINDOW_S == 60
    short = config(api_keys=SecretStr("sk-" + "x" * 32), rate_limit_rpm=5, rate_limit_window_s=1.5).limiter
    assert short is not None and short.windows.window_s == 1.5 and short.windows.window_us == 1_500_000
    assert config(rate_limit_tpm=5000).limiter is None  # no keys: nothing to limit by


@pytest.fixture
def charged() -> usage.TokenUsage:
    return usage.TokenUsage()


def test_the_service_tracker_charges_finished_usage_once(charged: usage.TokenUsage) -> None:
    track = Tracker(Metrics(), "tiny", "local", 0.0, RequestContext(usage=charged))
    result = Result(prompt_tokens=30)
    track.started(result)
    result.completion_tokens = 12
    track.finished(result, None)
    track.disconnected()  # after the end: nothing more
    assert charged.tokens == 42


@pytest.mark.parametrize("end", ["disconnected", "failed"])
def test_the_tracker_charges_what_was_used_when_a_request_ends_early(charged: usage.TokenUsage, end: str) -> None:
    from server.errors import GenerationError

    track = Tracker(Metrics(), "tiny", "local", 0.0, RequestContext(usage=charged))
    result = Result(prompt_tokens=30)
    track.started(result)
    result.completion_tokens = 7  # the deltas seen before the client left or the worker was lost
    if end == "disconnected":
        track.disconnected()
    else:
        track.failed(GenerationError("lost", code="worker_lost"))
    assert charged.tokens == 37


def test_the_tracker_charges_nothing_for_a_request_refused_before_it_started(charged: usage.TokenUsage) -> None:
    from server.errors import ContextLengthError

    Tracker(Metrics(), "tiny", "local", 0.0, RequestContext(usage=charged)).failed(ContextLengthError("too long"))
    assert charged.tokens == 0


def test_without_a_token_limited_request_the_tracker_charges_nowhere() -> None:
    context = RequestContext()
    track = Tracker(Metrics(), "tiny", "hosted", 0.0, context)
    track.finished(Result(prompt_tokens=3, completion_tokens=4), None)
    context.charge(10)  # a no-op outside a token-limited request
    assert context.usage is None


async def test_a_reservation_holds_only_what_the_request_has_not_held_yet() -> None:
    held: list[int] = []

    async def reserver(tokens: int) -> None:
        held.append(tokens)

    context = RequestContext(usage=usage.TokenUsage(reserver))
    await context.reserve(300)
    await context.reserve(200)  # already held
    await context.reserve(450)
    assert held == [300, 150]
    assert context.usage is not None and context.usage.reserved == 450
    await RequestContext().reserve(100)  # not token-limited: nothing to hold, nothing raised


def test_the_usage_travels_in_the_scope_state() -> None:
    scope: dict[str, object] = {"type": "http", "state": {"request_id": "req_1"}}
    assert usage.of(scope) is None
    sink = usage.TokenUsage()
    usage.put(scope, sink)
    assert usage.of(scope) is sink
    assert scope["state"] == {"request_id": "req_1", usage.STATE_KEY: sink}, "other state is kept"
