"""A started local request that no worker holds any more is admitted again rather than waited on to its
deadline: against a real Redis, with the worker's side written by hand. A failover can lose what had not
reached the replica yet (the job, its admitted mark, its running mark) while the worker that started it
lives on and beats its heartbeat; an outage makes a worker drop what it held, the job staying queued."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from server.backends.base import Delta
from server.backends.local import LocalBackend, LocalGeneration
from server.queue import keys
from server.queue.client import QueueClient
from server.queue.messages import Job, SamplingParams, encode_event
from server.registry import LocalModel

pytestmark = pytest.mark.integration

STALL_S = 0.2
LEASE_S = 0.1  # silence after `started` is looked into after STALL_S + 2 * LEASE_S = 0.4 s
READMITTED = "no worker holds it after its start; admitted again"


@pytest.fixture
async def started(redis_url: str, redis_client: aioredis.Redis) -> AsyncIterator[tuple[Job, LocalGeneration]]:
    """A job submitted through the backend, started by worker w1 (which beats its heartbeat throughout)."""
    queue = QueueClient(redis_url)
    job, gen = await submitted(queue)
    beating = asyncio.create_task(heartbeat(redis_client, job.model))
    try:
        await redis_client.set(keys.job_running(job.id), 1, ex=600)
        await redis_client.xadd(keys.response_stream(job.id), encode_event(STARTED))
        await gen.start()
        yield job, gen
    finally:
        beating.cancel()
        await gen.close()
        await queue.close()


STARTED = {"type": "started", "attempt": 1, "worker": "w1", "prompt_tokens": 3}


async def submitted(queue: QueueClient) -> tuple[Job, LocalGeneration]:
    """A new job for a model of its own, submitted through the local backend."""
    backend = LocalBackend(queue, queue_timeout_s=30, stall_timeout_s=STALL_S, lease_s=LEASE_S, heartbeat_ttl_s=0.5)
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model=f"m{uuid.uuid4().hex[:8]}", kind="chat", enqueued_at=now,
              deadline=now + 30, params=SamplingParams(), messages=[{"role": "user", "content": "hi"}])
    return job, await backend.submit(job, LocalModel(gguf="unused.gguf"))


async def heartbeat(r: aioredis.Redis, model: str) -> None:
    while True:
        await r.zadd(keys.worker_heartbeats(model), {"w1": time.time()})
        await asyncio.sleep(0.05)


async def queued(r: aioredis.Redis, job: Job) -> list[bytes]:
    """The ids of the model's stream entries (where a worker reads jobs)."""
    return [entry_id for entry_id, _ in await r.xrange(keys.request_stream(job.model))]


async def wait_for(check: Callable[[], Awaitable[bool]], *, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def answer(r: aioredis.Redis, job: Job, text: str) -> None:
    """What a worker writes for attempt 1: its running mark, `started`, the text, `done`."""
    await r.set(keys.job_running(job.id), 1, ex=600)
    for event in (STARTED, {"type": "delta", "attempt": 1, "text": text, "tokens": 1},
                  {"type": "done", "attempt": 1, "finish_reason": "stop",
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1}}):
        await r.xadd(keys.response_stream(job.id), encode_event(event))


async def text_of(gen: LocalGeneration) -> str:
    return "".join(d.text for d in [item async for item in gen.deltas()] if isinstance(d, Delta))


async def test_a_job_redis_lost_is_queued_again_though_its_worker_lives(
        redis_client: aioredis.Redis, started: tuple[Job, LocalGeneration]) -> None:
    job, gen = started
    [first] = await queued(redis_client, job)
    reading = asyncio.create_task(text_of(gen))
    # the failover: the new master never had the job, its admitted mark nor its running mark
    await redis_client.delete(keys.request_stream(job.model), keys.job_admitted(job.id), keys.job_running(job.id))

    async def queued_again() -> bool:
        return bool(await queued(redis_client, job))
    await wait_for(queued_again, what="the job queued again")
    [again] = await queued(redis_client, job)
    assert again != first and not reading.done()
    await answer(redis_client, job, "hello")
    assert await asyncio.wait_for(reading, 10) == "hello"


async def test_a_job_still_queued_is_not_queued_twice(
        redis_client: aioredis.Redis, started: tuple[Job, LocalGeneration], caplog: pytest.LogCaptureFixture) -> None:
    job, gen = started
    [first] = await queued(redis_client, job)
    reading = asyncio.create_task(text_of(gen))
    # its worker dropped it in an outage (its running mark taken back); the job and its admitted mark stay
    await redis_client.delete(keys.job_running(job.id))
    with caplog.at_level(logging.INFO, logger="slm.queue"):

        async def admitted_again() -> bool:
            return any(READMITTED in record.getMessage() for record in caplog.records)
        await wait_for(admitted_again, what="the admission run again")
    assert await queued(redis_client, job) == [first] and not reading.done()  # a no-op: the lease's lapse redelivers it
    await answer(redis_client, job, "once")
    assert await asyncio.wait_for(reading, 10) == "once"


async def test_a_job_its_worker_holds_is_left_to_it(
        redis_client: aioredis.Redis, started: tuple[Job, LocalGeneration], caplog: pytest.LogCaptureFixture) -> None:
    job, gen = started
    reading = asyncio.create_task(text_of(gen))
    with caplog.at_level(logging.INFO, logger="slm.queue"):
        done, _ = await asyncio.wait({reading}, timeout=4 * (STALL_S + 2 * LEASE_S))  # a long prompt's silence
        assert not done and not any(READMITTED in record.getMessage() for record in caplog.records)
    await answer(redis_client, job, "held")
    assert await asyncio.wait_for(reading, 10) == "held"


async def test_a_job_lost_before_its_start_is_queued_again_once_the_feed_is_back(
        redis_url: str, redis_client: aioredis.Redis) -> None:
    queue = QueueClient(redis_url)
    job, gen = await submitted(queue)
    assert queue.feed is not None
    feed = queue.feed

    async def live() -> bool:
        return feed.live
    try:
        await wait_for(live, what="the event feed subscribed")
        generation = feed.generation
        starting = asyncio.create_task(gen.start())
        # a failover before the job reached the replica: the job and its admitted mark are gone, and the
        # feed's connection with the old master
        await redis_client.delete(keys.request_stream(job.model), keys.job_admitted(job.id))
        await redis_client.client_kill_filter(_type="pubsub")

        async def queued_again() -> bool:
            return feed.generation > generation and bool(await queued(redis_client, job))
        await wait_for(queued_again, what="the job queued again under a new subscription")
        await answer(redis_client, job, "after")
        await asyncio.wait_for(starting, 10)
        assert await asyncio.wait_for(text_of(gen), 10) == "after"
    finally:
        await gen.close()
        await queue.close()
