"""The per-key windows slide (issue 17, item 14): no interval of `SLM_RATE_LIMIT_WINDOW_S` seconds
admits more than the limit, not even around the moment a fixed window would turn, across gateways
sharing one Redis. Windows of 1-2 s let time pass for real; it is read from Redis (`TIME`), the
clock the limiter uses, and waited for by polling it."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
import pytest
import redis
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from server.queue import keys as redis_keys
from server.registry import parse_registry
from server.security import SecurityConfig, SecurityMiddleware
from server.security.api_keys import ApiKeys
from server.security.rate_limits import RateLimiter
from server.security.windows import KEY_SLACK_MS
from server.settings import Settings
from tests.conftest import SMOLLM2, wait_until
from tests.gateway_thread import running_gateway
from tests.security.conftest import NamedKeys
from tests.security.test_token_budget import APP

pytestmark = pytest.mark.integration

RPM = 5  # per window, in the two-gateway attack
ATTACK_WINDOW_S = 2.0
WINDOW_S = 2.0  # of the in-process limiter


def redis_now(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def wait_for_redis_time(r: redis.Redis, at: float, what: str) -> None:
    wait_until(lambda: redis_now(r) >= at, timeout_s=10, interval_s=0.01, what=what)


# -- two gateways, one Redis ----------------------------------------------------------------------------
@dataclass
class TwoGateways(NamedKeys):
    urls: tuple[str, str]
    keys: dict[str, str]
    redis_url: str


@pytest.fixture(scope="module")
def two_gateways(redis_url: str) -> Iterator[TwoGateways]:
    keys = {"attacker": f"sk-attacker-{secrets.token_hex(16)}"}
    registry = parse_registry({"models": {"tiny": {"gguf": SMOLLM2}}})
    settings = Settings(redis_url=redis_url, api_keys=SecretStr(",".join(keys.values())), rate_limit_rpm=RPM,
                        rate_limit_window_s=ATTACK_WINDOW_S, reload_interval_s=0)
    with running_gateway(settings, registry) as a, running_gateway(settings, registry) as b:
        yield TwoGateways((a, b), keys, redis_url)


def test_no_window_admits_more_than_the_limit_across_two_gateways(two_gateways: TwoGateways) -> None:
    """A client hammers through both gateways in turn until it has been let in 2 x RPM + 1 times: a
    fixed window would let it in `RPM` times just before the window turned and `RPM` times more just
    after; a sliding one lets the next one in only as the oldest leaves the window."""
    admitted: list[tuple[int, float, float, str]] = []  # (number, sent, answered, gateway); monotonic time
    refused: list[httpx.Response] = []
    clients = [httpx.Client(base_url=url, headers=two_gateways.auth("attacker"), timeout=10)
               for url in two_gateways.urls]
    sent_count = [0]

    def one_request() -> bool:
        """Send the next request (alternating gateways); done once 2 x RPM + 1 were admitted."""
        number = sent_count[0]
        client = clients[number % 2]
        sent_count[0] += 1
        sent = time.monotonic()
        response = client.get("/v1/models")
        answered = time.monotonic()
        assert response.status_code in (200, 429), response.text
        assert response.headers["x-ratelimit-limit-requests"] == str(RPM)
        if response.status_code == 200:
            admitted.append((number, sent, answered, str(client.base_url)))
            assert 0 <= int(response.headers["x-ratelimit-remaining-requests"]) < RPM
        else:
            refused.append(response)
        return len(admitted) > 2 * RPM

    try:
        for client in clients:  # connected before the first request counts
            assert client.get("/health").status_code == 200
        wait_until(one_request, timeout_s=30, interval_s=0.01, what=f"{2 * RPM + 1} requests to be admitted")
    finally:
        for client in clients:
            client.close()

    # the requests were sequential, so admitted in this order: any RPM + 1 of them in a row span more
    # than a window (the later one was answered at least a window after the earlier one was sent)
    for first, last in zip(admitted, admitted[RPM:], strict=False):
        assert last[2] - first[1] >= ATTACK_WINDOW_S, f"{RPM + 1} admitted within {last[2] - first[1]:.3f}s"
    assert [number for number, *_ in admitted[:RPM]] == list(range(RPM)), "a fresh key's first requests refused"
    assert {url.rstrip("/") for *_, url in admitted} == set(two_gateways.urls)
    assert refused, "never pressed on the limit"
    for response in refused:
        error = response.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and f"{RPM} requests per 2 s" in error["message"]
        assert response.headers["retry-after"] in ("1", "2")  # whole seconds, at most one window
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-reset-requests"] == response.headers["retry-after"] + "s"


# -- in process, on a real Redis: what the headers and Retry-After say -----------------------------------
@dataclass
class Limited(NamedKeys):
    client: httpx.AsyncClient
    keys: dict[str, str]
    redis: redis.Redis


@asynccontextmanager
async def limited_app(redis_url: str, *, rpm: int = 0, tpm: int = 0, concurrency: int = 0,
                      app: ASGIApp = APP) -> AsyncIterator[Limited]:
    keys = {"a": f"sk-a-{secrets.token_hex(16)}"}
    limiter = RateLimiter(redis_url, rpm=rpm, tpm=tpm, concurrency=concurrency, window_s=WINDOW_S)
    config = SecurityConfig(ApiKeys.load(",".join(keys.values())), 1 << 20, limiter=limiter)
    transport = httpx.ASGITransport(app=SecurityMiddleware(app, config))
    r = redis.Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Limited(client, keys, r)
    finally:
        r.close()
        await limiter.close()


def scores(r: redis.Redis, key: str) -> list[float]:
    """The Redis times (s) of a window's entries, oldest first."""
    return [score / 1e6 for _, score in r.zrange(key, 0, -1, withscores=True)]


async def test_retry_after_is_when_the_oldest_request_leaves_the_window(redis_url: str) -> None:
    async with limited_app(redis_url, rpm=3) as limited:
        c, r, auth = limited.client, limited.redis, limited.auth("a")
        for left in (2, 1, 0):
            response = await c.post("/v1/spend", headers=auth)
            assert response.status_code == 200
            assert response.headers["x-ratelimit-remaining-requests"] == str(left)
        log = redis_keys.request_window(limited.key_id("a"))
        oldest = scores(r, log)[0]
        assert 0 < r.pttl(log) <= WINDOW_S * 1000 + KEY_SLACK_MS

        before = redis_now(r)
        refused = await c.post("/v1/spend", headers=auth)
        after = redis_now(r)
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert math.ceil(oldest + WINDOW_S - after) <= retry_after <= math.ceil(oldest + WINDOW_S - before)
        assert refused.headers["x-ratelimit-reset-requests"] == f"{retry_after}s"
        assert len(scores(r, log)) == 3, "a refused request must not be counted"

        wait_for_redis_time(r, oldest + WINDOW_S / 2, "half a window after the first request")
        still = await c.post("/v1/spend", headers=auth)
        assert redis_now(r) < oldest + WINDOW_S, "too slow to ask while the first request was still counted"
        assert still.status_code == 429, "let in before the oldest request left the window"

        wait_for_redis_time(r, after + retry_after, "Retry-After to pass")
        again = await c.post("/v1/spend", headers=auth)
        assert again.status_code == 200, "still refused after waiting Retry-After"


async def test_tokens_leave_the_window_charge_by_charge(redis_url: str) -> None:
    tpm = 1000
    async with limited_app(redis_url, tpm=tpm) as limited:
        c, r, auth = limited.client, limited.redis, limited.auth("a")
        log = redis_keys.token_window(limited.key_id("a"))
        assert (await c.post("/v1/spend?tokens=600", headers=auth)).status_code == 200
        (first,) = scores(r, log)
        wait_for_redis_time(r, first + WINDOW_S / 2, "half a window after the first charge")
        second_response = await c.post("/v1/spend?tokens=500", headers=auth)
        assert second_response.headers["x-ratelimit-remaining-tokens"] == "400"
        second = scores(r, log)[1]

        before = redis_now(r)
        refused = await c.post("/v1/spend?tokens=1", headers=auth)  # 1100 in the window
        after = redis_now(r)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "tokens_limit_exceeded"
        assert "1000 tokens per 2 s, 1100 used" in refused.json()["error"]["message"]
        retry_after = int(refused.headers["retry-after"])  # until the 600 leave: then 500 < 1000
        assert math.ceil(first + WINDOW_S - after) <= retry_after <= math.ceil(first + WINDOW_S - before)
        assert refused.headers["x-ratelimit-reset-tokens"] == f"{retry_after}s"

        wait_until(lambda: redis_now(r) > first + WINDOW_S, timeout_s=10, interval_s=0.01,
                   what="the first charge to leave the window")
        served = await c.post("/v1/spend?tokens=1", headers=auth)
        assert redis_now(r) < second + WINDOW_S, "too slow to ask while the second charge was still counted"
        assert served.status_code == 200
        # the 600 have left, the 500 have not: neither a fresh window (1000) nor a full one (0)
        assert served.headers["x-ratelimit-remaining-tokens"] == str(tpm - 500)
        assert int(r.get(redis_keys.token_window_total(limited.key_id("a"))) or 0) == 501


async def test_a_request_refused_for_concurrency_takes_no_place_in_the_window(redis_url: str) -> None:
    entered, release = anyio.Event(), anyio.Event()

    async def hold(request: Request) -> JSONResponse:
        entered.set()
        await release.wait()
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/v1/hold", hold), Route("/v1/quick", lambda request: JSONResponse({}))])
    async with limited_app(redis_url, rpm=2, concurrency=1, app=app) as limited:
        c, auth = limited.client, limited.auth("a")
        log = redis_keys.request_window(limited.key_id("a"))
        held: list[httpx.Response] = []

        async def first() -> None:
            held.append(await c.get("/v1/hold", headers=auth))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            with anyio.fail_after(10):
                await entered.wait()
            refused = await c.get("/v1/quick", headers=auth)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert limited.redis.zcard(log) == 1, "a request refused for concurrency was counted"
            release.set()
        assert held[0].status_code == 200
        second = await c.get("/v1/quick", headers=auth)  # the second of two: admitted
        assert second.status_code == 200 and second.headers["x-ratelimit-remaining-requests"] == "0"
