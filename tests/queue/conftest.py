"""Shared by the queue's tests: a gateway's queue client on the session's Redis, with its event feed (a file
that needs another kind defines its own `queue`; the plain `client` is the root conftest's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.queue.client import QueueClient


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[QueueClient]:
    q = QueueClient(redis_url, timeout_s=0.5)
    yield q
    await q.close()
