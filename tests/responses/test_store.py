"""Stored responses on a real Redis: scoped to their key, expiring, bounded without evicting."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from server.queue import keys
from server.responses.store import ResponseStore


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    await redis.delete(keys.stored_responses_expiry(), keys.stored_responses_sizes(), keys.stored_responses_total())
    yield redis
    await redis.aclose()


def response(text: str = "hello") -> dict[str, Any]:
    return {"id": f"resp_{uuid.uuid4().hex}", "object": "response", "output": [{"text": text}]}


async def test_saved_for_its_key_only_with_a_ttl(client: aioredis.Redis) -> None:
    store = ResponseStore(client, ttl_s=120, max_bytes=1 << 20)
    first = response()
    assert await store.save("key-a", first, [{"id": "msg_1"}])
    record = await store.load("key-a", first["id"])
    assert record == {"response": first, "items": [{"id": "msg_1"}]}
    assert await store.load("key-b", first["id"]) is None
    assert 0 < await client.pttl(keys.stored_response("key-a", first["id"])) <= 120_000
    assert not await store.delete("key-b", first["id"])
    assert await store.delete("key-a", first["id"])
    assert await store.load("key-a", first["id"]) is None
    assert int(await client.get(keys.stored_responses_total()) or 0) == 0


async def test_the_cap_refuses_new_writes_and_keeps_live_ones(client: aioredis.Redis) -> None:
    store = ResponseStore(client, ttl_s=120, max_bytes=1200)
    kept = [response("x" * 200) for _ in range(3)]
    for r in kept:
        assert await store.save("key-a", r, [])
    assert not await store.has_room([])  # under the cap, but not with room for another response
    assert await ResponseStore(client, ttl_s=120, max_bytes=1 << 20).has_room([{"id": "msg_1"}])
    one_more = response("y" * 600)
    assert not await store.save("key-a", one_more, [])
    assert await store.load("key-a", one_more["id"]) is None
    for r in kept:  # nothing live was evicted
        assert await store.load("key-a", r["id"]) is not None
    replaced = {**kept[0], "output": [{"text": "short"}]}  # replacing one counts its new size, not both
    assert await store.save("key-a", replaced, [])
    assert await store.delete("key-a", kept[1]["id"])
    assert await store.save("key-a", response("z" * 300), [])


async def test_expired_entries_leave_the_total(client: aioredis.Redis) -> None:
    store = ResponseStore(client, ttl_s=120, max_bytes=600)
    old = response("o" * 300)
    assert await store.save("key-a", old, [])
    # the entry expires (as Redis would after its TTL): its expiry is moved into the past
    await client.zadd(keys.stored_responses_expiry(), {keys.stored_response("key-a", old["id"]): 1})
    await client.delete(keys.stored_response("key-a", old["id"]))
    fresh = response("f" * 300)
    assert await store.save("key-a", fresh, [])
    total = int(await client.get(keys.stored_responses_total()) or 0)
    assert total == int(await client.hget(keys.stored_responses_sizes(), keys.stored_response("key-a", fresh["id"])))
