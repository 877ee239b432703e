"""Passive upstream health: a hosted model whose upstream keeps failing is `unreachable`, its requests fail at
once (503 `upstream_unavailable`) so fallbacks and routers move on, and after the cool-down one trial request
brings it back. First the backend on an injected clock, then the real gateway against the fake upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from server.backends.health import HealthPolicy
from server.backends.hosted import HostedBackend, HostedParams
from server.errors import (
    RateLimitError,
    SlmError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from server.registry import parse_registry
from server.settings import Settings
from tests.backends.conftest import CANARY_KEY, KEY_ENV, MakeBackend, until
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.conftest import wait_until
from tests.gateway_thread import running_gateway
from tests.prometheus_text import scrape

HI = [{"role": "user", "content": "hi"}]
POLICY = HealthPolicy(failures_to_open=3, cool_down_s=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def up_gauge(backend: HostedBackend) -> float | None:
    return backend.metrics.registry.get_sample_value("slm_upstream_up", {"model": "big"})


async def outcome(backend: HostedBackend) -> SlmError | None:
    """One chat request through the backend: None when answered in full, else the error it raised."""
    gen = backend.generation("chat", HostedParams(), messages=HI)
    try:
        await gen.start()
        _ = [text async for text in gen.deltas()]
    except SlmError as exc:
        return exc
    finally:
        await gen.close()
    return None


# -- the backend ------------------------------------------------------------------------------------

async def test_the_backend_opens_after_n_failed_requests_and_refuses_without_calling(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    clock = Clock()
    backend = make_backend(health=POLICY, clock=clock, retries=1, timeout=3.0)
    assert up_gauge(backend) == 1.0
    # a 5xx (retried once: still one failed request), a timeout (never retried), then a 5xx again
    fake.script(Reply.error(500), Reply.error(503), Reply.hang(), Reply.error(502), Reply.error(502))
    assert isinstance(await outcome(backend), UpstreamError)
    assert backend.health.failures == 1 and backend.health.state == "closed"
    assert isinstance(await outcome(backend), UpstreamTimeoutError)
    assert backend.health.failures == 2 and backend.health.state == "closed"
    fake.release()
    assert isinstance(await outcome(backend), UpstreamError)
    assert backend.health.state == "open" and up_gauge(backend) == 0.0

    calls = len(fake.requests)
    refused = await outcome(backend)
    assert isinstance(refused, UpstreamUnavailableError)
    assert refused.status == 503 and refused.code == "upstream_unavailable"
    assert len(fake.requests) == calls  # failed at once: the upstream was not asked
    assert (backend.in_flight, backend.waiting) == (0, 0)

    clock.now += POLICY.cool_down_s  # the cool-down is over: the next request is the trial
    assert await outcome(backend) is None
    assert len(fake.requests) == calls + 1
    assert backend.health.state == "closed" and up_gauge(backend) == 1.0


async def test_a_429_is_busy_not_down_and_closes_the_circuit(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    clock = Clock()
    backend = make_backend(health=POLICY, clock=clock)
    fake.script(Reply.error(500), Reply.error(500))
    for _ in range(2):
        assert isinstance(await outcome(backend), UpstreamError)
    assert backend.health.failures == 2
    fake.default = Reply.error(429, "Rate limit reached", headers={"Retry-After": "3"})
    for _ in range(POLICY.failures_to_open + 2):
        assert isinstance(await outcome(backend), RateLimitError)
        assert backend.health.failures == 0 and backend.health.state == "closed"
    fake.script(*[Reply.error(500)] * POLICY.failures_to_open)
    for _ in range(POLICY.failures_to_open):
        await outcome(backend)
    clock.now += POLICY.cool_down_s
    assert isinstance(await outcome(backend), RateLimitError)  # the trial got an answer: the upstream is up
    assert backend.health.state == "closed" and up_gauge(backend) == 1.0


async def test_a_trial_whose_client_leaves_lets_the_next_request_be_the_trial(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    clock = Clock()
    backend = make_backend(health=POLICY, clock=clock)
    fake.script(*[Reply.error(500)] * POLICY.failures_to_open, Reply.hang())
    for _ in range(POLICY.failures_to_open):
        await outcome(backend)
    clock.now += POLICY.cool_down_s
    trial = asyncio.create_task(outcome(backend))
    await until(lambda: fake.in_flight == 1, what="the trial reaching the upstream")
    assert backend.health.state == "half_open"
    assert isinstance(await outcome(backend), UpstreamUnavailableError)  # one trial at a time
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert backend.health.state == "open" and backend.in_flight == 0
    fake.release()
    assert await outcome(backend) is None  # the next request was the trial, and it answered
    assert backend.health.state == "closed"


# -- the gateway ------------------------------------------------------------------------------------

@dataclass
class Gateway:
    url: str

    def chat(self, model: str, *, stream: bool = False) -> tuple[httpx.Response, float]:
        """The response (read in full) and how long it took."""
        began = time.monotonic()
        with httpx.stream("POST", self.url + "/v1/chat/completions", timeout=60,
                          json={"model": model, "messages": HI, "max_tokens": 8, "stream": stream}) as response:
            response.read()
        return response, time.monotonic() - began

    def state(self, model: str) -> str:
        status = httpx.get(self.url + "/v1/status", timeout=10).json()
        return str({m["name"]: m["state"] for m in status["models"]}[model])

    def metric(self, name: str, **labels: str) -> float | None:
        """The sample with exactly these labels; None when it is not there."""
        return scrape(self.url).get((name, frozenset(labels.items())))


@contextmanager
def gateway(redis_url: str, models: dict[str, Any], policy: HealthPolicy) -> Iterator[Gateway]:
    """The real gateway app under uvicorn in a thread, its hosted backends built with `policy`."""
    with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), parse_registry({"models": models}),
                         upstream_health=policy) as url:
        yield Gateway(url)


def hosted(upstream: FakeUpstream | str, **fields: Any) -> dict[str, Any]:
    api_base = upstream if isinstance(upstream, str) else upstream.api_base
    return {"backend": "hosted", "litellm_model": "openai/fake-model", "api_base": api_base, "api_key_env": KEY_ENV,
            "retries": 0, **fields}


def error_of(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY_KEY)


def test_an_upstream_answering_5xx_is_unreachable_fails_fast_then_recovers(
        redis_url: str, fake: FakeUpstream) -> None:
    timeout = 20.0
    policy = HealthPolicy(failures_to_open=3, cool_down_s=4.0)
    fake.default = Reply.error(503, "the provider is down")
    with gateway(redis_url, {"big": hosted(fake, timeout=timeout)}, policy) as gw:
        assert gw.state("big") == "ready"
        for i in range(policy.failures_to_open):
            opened = time.monotonic()  # at the latest: the circuit opens during the last of these requests
            response, _ = gw.chat("big")
            assert error_of(response) == (502, "upstream_failed")
            assert gw.state("big") == ("unreachable" if i == policy.failures_to_open - 1 else "ready")
        calls = len(fake.requests)
        for stream in (False, True):
            response, took = gw.chat("big", stream=stream)
            assert error_of(response) == (503, "upstream_unavailable"), response.text
            assert "'big' is unreachable upstream" in response.json()["error"]["message"]
            assert int(response.headers["retry-after"]) >= 1
            assert took < timeout
        assert time.monotonic() - opened < policy.cool_down_s, "the machine was too slow to check the open circuit"
        assert len(fake.requests) == calls  # refused without calling the upstream
        assert gw.metric("slm_upstream_up", model="big") == 0.0

        fake.default = Reply.ok()  # the provider is back
        wait_until(lambda: gw.chat("big")[0].status_code == 200, timeout_s=policy.cool_down_s + 30,
                   what="a request to succeed after the cool-down", interval_s=0.2)
        assert time.monotonic() - opened >= policy.cool_down_s
        assert len(fake.requests) == calls + 1  # exactly one trial reached the upstream
        assert gw.state("big") == "ready"
        assert gw.metric("slm_upstream_up", model="big") == 1.0
        assert gw.chat("big", stream=True)[0].status_code == 200


def test_a_stopped_upstream_is_unreachable_until_it_is_started_again(redis_url: str) -> None:
    policy = HealthPolicy(failures_to_open=3, cool_down_s=4.0)
    with ExitStack() as stack:
        first = FakeUpstream()
        port = first.port
        with first:
            pass  # started, then stopped: nothing listens on its port now
        with gateway(redis_url, {"solo": hosted(f"http://127.0.0.1:{port}/v1", timeout=20)}, policy) as gw:
            for _ in range(policy.failures_to_open):
                assert error_of(gw.chat("solo")[0]) == (502, "upstream_unreachable")
            assert gw.state("solo") == "unreachable"
            assert error_of(gw.chat("solo")[0]) == (503, "upstream_unavailable")
            again = stack.enter_context(FakeUpstream(port))
            wait_until(lambda: gw.chat("solo")[0].status_code == 200, timeout_s=policy.cool_down_s + 30,
                       what="the restarted upstream to serve again", interval_s=0.2)
            assert len(again.requests) == 1
            assert gw.state("solo") == "ready"


def test_a_hanging_upstream_moves_its_fallback_chain_on_at_once(redis_url: str, fake: FakeUpstream) -> None:
    timeout = 2.0
    policy = HealthPolicy(failures_to_open=3, cool_down_s=300.0)  # stays open for the whole test
    fake.default = Reply.hang()
    with FakeUpstream() as spare, gateway(redis_url, {"big": hosted(fake, timeout=timeout, fallbacks=["backup"]),
                                                      "backup": hosted(spare)}, policy) as gw:
        with ThreadPoolExecutor(policy.failures_to_open) as pool:  # each waits out the timeout, then falls back
            results = list(pool.map(lambda _: gw.chat("big"), range(policy.failures_to_open)))
        for response, took in results:
            assert response.status_code == 200, response.text
            assert (response.headers["x-slm-model"], response.headers["x-slm-fallback-from"]) == ("backup", "big")
            assert took >= timeout * 0.9
        assert (gw.state("big"), gw.state("backup")) == ("unreachable", "ready")
        calls = len(fake.requests)
        for stream in (False, True):
            response, took = gw.chat("big", stream=stream)
            assert response.status_code == 200, response.text
            assert (response.headers["x-slm-model"], response.headers["x-slm-fallback-from"]) == ("backup", "big")
            assert took < timeout  # no timeout waited out: big was refused at once
        assert len(fake.requests) == calls
        assert gw.metric("slm_fallbacks_total", model="big", to="backup", reason="unavailable") == 2.0
        assert gw.metric("slm_fallbacks_total", model="big", to="backup", reason="timeout") == 3.0


def test_a_router_sends_nothing_to_an_unreachable_hosted_target(redis_url: str, fake: FakeUpstream) -> None:
    policy = HealthPolicy(failures_to_open=3, cool_down_s=300.0)
    fake.default = Reply.error(500)
    models = {"big": hosted(fake), "auto": {"backend": "router", "targets": ["big", "backup"],
                                            "ttft_objective_s": 30}}
    with FakeUpstream() as spare, gateway(redis_url, {**models, "backup": hosted(spare)}, policy) as gw:
        for _ in range(policy.failures_to_open):  # unmeasured, big is predicted to meet the objective
            response, _ = gw.chat("auto")
            assert response.status_code == 200, response.text
            assert (response.headers["x-slm-model"], response.headers["x-slm-fallback-from"]) == ("backup", "big")
        assert gw.metric("slm_router_decisions_total", router="auto", model="big", reason="objective") == 3.0
        calls = len(fake.requests)
        response, _ = gw.chat("auto")
        assert response.status_code == 200
        assert response.headers["x-slm-model"] == "backup" and "x-slm-fallback-from" not in response.headers
        assert response.headers["x-slm-route"] == "objective"
        assert gw.metric("slm_router_decisions_total", router="auto", model="backup", reason="objective") == 1.0
        assert len(fake.requests) == calls
