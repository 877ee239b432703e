"""The gateway's wait for a request's first token, against a real Redis with hand-written events:
silence while the serving worker still beats its heartbeat (a long prompt being evaluated) is
waited out; silence from a worker whose heartbeat stopped ends with `worker_lost`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from server.backends.base import Delta
from server.backends.local import LocalGeneration
from server.errors import GenerationError
from server.queue import keys
from server.queue.client import QueueClient
from server.queue.messages import Job, SamplingParams, encode_event

pytestmark = pytest.mark.integration

STALL_S = 0.2
LEASE_S = 0.1  # the wait before the first token: STALL_S + 2 * LEASE_S = 0.4 s


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[QueueClient]:
    client = QueueClient(redis_url)
    yield client
    await client.close()


async def started_job(r: aioredis.Redis) -> Job:
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model=f"m{uuid.uuid4().hex[:8]}", kind="chat", enqueued_at=now,
              deadline=now + 60, params=SamplingParams(), messages=[{"role": "user", "content": "hi"}])
    await r.xadd(keys.response_stream(job.id), encode_event(
        {"type": "started", "attempt": 1, "worker": "w1", "prompt_tokens": 3}))
    return job


async def beat(r: aioredis.Redis, model: str) -> None:
    """A worker's heartbeat, as its keep-alive thread beats it."""
    while True:
        await r.zadd(keys.worker_heartbeats(model), {"w1": time.time()})
        await asyncio.sleep(0.1)


async def text_of(gen: LocalGeneration) -> str:
    return "".join(d.text for d in [item async for item in gen.deltas()] if isinstance(d, Delta))


async def test_silence_before_the_first_token_is_waited_out_while_the_worker_beats(
        redis_client: aioredis.Redis, queue: QueueClient) -> None:
    job = await started_job(redis_client)
    heart = asyncio.create_task(beat(redis_client, job.model))
    gen = LocalGeneration(queue, job, stall_timeout_s=STALL_S, lease_s=LEASE_S, heartbeat_ttl_s=0.5)
    try:
        await gen.start()
        reading = asyncio.create_task(text_of(gen))
        done, _ = await asyncio.wait({reading}, timeout=4 * (STALL_S + 2 * LEASE_S))
        assert not done, "the gateway gave up on a worker that is alive"
        stream = keys.response_stream(job.id)
        await redis_client.xadd(stream, encode_event({"type": "delta", "attempt": 1, "text": "hello", "tokens": 1}))
        await redis_client.xadd(stream, encode_event({"type": "done", "attempt": 1, "finish_reason": "stop",
                                                      "usage": {"prompt_tokens": 3, "completion_tokens": 1}}))
        assert await asyncio.wait_for(reading, 10) == "hello"
    finally:
        heart.cancel()
        await gen.close()


async def test_silence_from_a_worker_without_heartbeat_ends_with_worker_lost(
        redis_client: aioredis.Redis, queue: QueueClient) -> None:
    job = await started_job(redis_client)
    await redis_client.zadd(keys.worker_heartbeats(job.model), {"w1": time.time() - 60})
    gen = LocalGeneration(queue, job, stall_timeout_s=STALL_S, lease_s=LEASE_S, heartbeat_ttl_s=0.5)
    try:
        await gen.start()
        with pytest.raises(GenerationError) as caught:
            await asyncio.wait_for(text_of(gen), 10)
        assert caught.value.code == "worker_lost"
    finally:
        await gen.close()
