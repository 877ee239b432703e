"""Shared by the queue's tests: a plain client of the session's real Redis, and a gateway's queue client on it
(with its event feed; a file that needs another kind defines its own `queue`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from server.queue.client import QueueClient


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[QueueClient]:
    q = QueueClient(redis_url, timeout_s=0.5)
    yield q
    await q.close()
