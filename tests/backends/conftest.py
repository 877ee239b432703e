"""Fixtures for the hosted backend: a fake upstream on 127.0.0.1 and backends pointed at it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from server.backends.hosted import HostedBackend
from server.backends.upstream import close_hosted_clients
from server.metrics import Metrics
from server.registry import HostedModel
from tests.backends.fake_upstream import FakeUpstream

# litellm must never fetch anything while tests run (its import otherwise reads a cost map from GitHub)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")

CANARY_KEY = "AIzaCanary7f3a9c1e5b2d4f6a8c0e91"  # not token-shaped: only the exact-key scrub can catch it
KEY_ENV = "HOSTED_TEST_API_KEY"
MakeBackend = Callable[..., HostedBackend]


@pytest.fixture(autouse=True)
async def _close_litellm_clients() -> AsyncIterator[None]:
    """litellm caches HTTP clients per event loop; close this test's before its loop goes away."""
    yield
    await close_hosted_clients()


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def make_backend(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> MakeBackend:
    """`make_backend(**entry_fields, slot_timeout_s=None, health=..., clock=...)`: a backend for
    `openai/fake-model` at the fake (`health`, `clock`: its upstream circuit's policy and clock).

    The key is the canary, read from the environment like a real deployment's.
    """
    monkeypatch.setenv(KEY_ENV, CANARY_KEY)

    def make(**fields: Any) -> HostedBackend:
        spec: dict[str, Any] = {"backend": "hosted", "litellm_model": "openai/fake-model", "api_base": fake.api_base,
                                "api_key_env": KEY_ENV, "timeout": 5.0, "retries": 0, **fields}
        slot_timeout_s = spec.pop("slot_timeout_s", None)
        health = {k: spec.pop(k) for k in ("health", "clock") if k in spec}
        return HostedBackend("big", HostedModel.model_validate(spec), Metrics(), retry_backoff_s=0.0,
                             slot_timeout_s=slot_timeout_s, **health)

    return make


async def until(check: Callable[[], bool], *, what: str, timeout_s: float = 5.0) -> None:
    """Poll a condition (yielding to the loop) until true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
