"""The gateway's shutdown closes the HTTP clients litellm cached for it, and only those."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from server.backends.hosted import HostedParams
from server.backends.upstream import close_hosted_clients, load_litellm
from server.registry import parse_registry
from server.settings import Settings
from tests.backends.conftest import CANARY_KEY, KEY_ENV, MakeBackend
from tests.backends.fake_upstream import FakeUpstream
from tests.gateway_thread import running_gateway

HI = [{"role": "user", "content": "hi"}]


def cached_clients() -> dict[str, object]:
    return dict(load_litellm().in_memory_llm_clients_cache.cache_dict)


def is_closed(client: object) -> bool:
    probe = getattr(client, "is_closed", None)
    return bool(probe() if callable(probe) else probe)


def test_shutting_the_gateway_down_closes_its_hosted_clients(redis_url: str, fake: FakeUpstream,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY_KEY)
    registry = parse_registry({"models": {"big": {
        "backend": "hosted", "litellm_model": "openai/fake-model", "api_base": fake.api_base,
        "api_key_env": KEY_ENV, "retries": 0}}})
    before = set(cached_clients())
    with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), registry) as url:
        for stream in (False, True):
            response = httpx.post(url + "/v1/chat/completions", timeout=30,
                                  json={"model": "big", "messages": HI, "stream": stream})
            assert response.status_code == 200
        ours = {key: client for key, client in cached_clients().items() if key not in before}
        assert ours, "the gateway's hosted calls cached no client"
        assert not any(is_closed(client) for client in ours.values())
    # running_gateway has stopped the server: its lifespan ended without raising (uvicorn would have logged
    # and the thread would still be alive otherwise), and it closed and forgot what it had cached
    assert all(is_closed(client) for client in ours.values())
    assert not set(ours) & set(cached_clients())


async def test_closing_leaves_other_event_loops_clients_alone(make_backend: MakeBackend) -> None:
    async def call() -> None:
        gen = make_backend().generation("chat", HostedParams(), messages=HI)
        await gen.start()
        _ = [text async for text in gen.deltas()]
        await gen.close()

    here = set(cached_clients())
    await call()
    mine = {k: c for k, c in cached_clients().items() if k not in here}
    # another loop (another app in the same process) makes and closes its own
    await asyncio.to_thread(lambda: asyncio.run(_call_and_close(call)))
    assert mine and all(not is_closed(c) for c in mine.values()) and set(mine) <= set(cached_clients())
    await close_hosted_clients()
    assert all(is_closed(c) for c in mine.values()) and not set(mine) & set(cached_clients())
    await close_hosted_clients()  # twice is harmless


async def _call_and_close(call: Callable[[], Awaitable[None]]) -> None:
    await call()
    await close_hosted_clients()
