"""The fair queue's scripts on a real Redis: admission (per model and per key share), the take's order
(priority classes, deficit round robin by weight, the starvation bound), positions, and that a take
hands entries to the consumer group (so leases and redelivery work as for the FIFO stream)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from server.errors import OverloadedError
from server.queue import fair, keys
from server.queue.client import Fairness, QueueClient
from server.queue.messages import JOB_FIELD, Job


@pytest.fixture
def model() -> str:
    return f"m{uuid.uuid4().hex[:8]}"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def submit(redis_url: str, model: str, jobs: list[tuple[str, int, float]], *, max_queue: int = 1000,
           share: float = 1.0, drain: float = 0.0) -> list[str]:
    """Admit jobs (key, priority, weight) in order through the gateway's client; their ids."""
    async def run() -> list[str]:
        client = QueueClient(redis_url)
        ids = []
        try:
            for key, priority, weight in jobs:
                now = time.time()
                job = Job(id=uuid.uuid4().hex, model=model, kind="chat", messages=[{"role": "user", "content": key}],
                          enqueued_at=now, deadline=now + 60, priority=priority)
                await client.submit(job, max_queue=max_queue, fairness=Fairness(key, weight, share, drain))
                ids.append(job.id)
        finally:
            await client.close()
        return ids
    return asyncio.run(run())


def take(r: redis.Redis, model: str, room: int, *, consumer: str = "w1", starve_ms: int = 60_000,
         every: int = 4) -> list[Job]:
    stream = keys.request_stream(model)
    reply: Any = r.register_script(fair.TAKE)(keys=[stream], args=[
        keys.fair_queue(model), keys.GROUP, consumer, room, starve_ms, every, JOB_FIELD])
    jobs = []
    for _entry_id, flat in reply or []:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        jobs.append(Job.decode(fields))
    return jobs


def who(job: Job) -> str:
    return str((job.messages or [{}])[0]["content"])


def test_two_equal_keys_alternate_whatever_the_arrival_order(redis_url: str, r: redis.Redis, model: str) -> None:
    submit(redis_url, model, [("a", 5, 1.0)] * 20 + [("b", 5, 1.0)] * 20)
    served = [who(j) for _ in range(20) for j in take(r, model, 1)]
    assert Counter(served) == {"a": 10, "b": 10}
    assert all(served[i] != served[i + 1] for i in range(19)), served


def test_weights_three_to_one_give_three_to_one(redis_url: str, r: redis.Redis, model: str) -> None:
    submit(redis_url, model, [("heavy", 5, 3.0)] * 40 + [("light", 5, 1.0)] * 40)
    served = Counter(who(j) for j in take(r, model, 40))
    assert served == {"heavy": 30, "light": 10}


def test_higher_class_first_and_fifo_within_a_key(redis_url: str, r: redis.Redis, model: str) -> None:
    low = submit(redis_url, model, [("k", 2, 1.0)] * 3)
    high = submit(redis_url, model, [("k", 8, 1.0)] * 3)
    assert [j.id for j in take(r, model, 6)] == high + low


def test_a_starving_lower_class_is_served_but_never_takes_over(redis_url: str, r: redis.Redis, model: str) -> None:
    submit(redis_url, model, [("batch", 2, 1.0)] * 10)
    submit(redis_url, model, [("chat", 8, 1.0)] * 30)
    served = [who(j) for _ in range(20) for j in take(r, model, 1, starve_ms=0, every=4)]  # every job is old
    assert served.count("batch") == 5, served  # one in four while starving, not all ten at once
    assert served.count("chat") == 15


def test_position_falls_as_the_queue_drains(redis_url: str, r: redis.Redis, model: str) -> None:
    ids = submit(redis_url, model, [("a", 5, 1.0)] * 4 + [("b", 5, 1.0)] * 4)

    def position(request_id: str) -> int:
        async def run() -> int:
            client = QueueClient(redis_url)
            try:
                return (await client.position(model, request_id))[0]
            finally:
                await client.close()
        return asyncio.run(run())

    last_b = ids[-1]
    seen = [position(last_b)]
    for _ in range(7):
        take(r, model, 1)
        seen.append(position(last_b))
    assert seen[0] == 8 and seen[-1] == 1, seen
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen), seen
    take(r, model, 1)
    assert position(last_b) == 0  # taken


def test_a_key_over_its_share_is_refused_while_others_are_admitted(redis_url: str, model: str) -> None:
    submit(redis_url, model, [("batch", 5, 1.0)] * 5, max_queue=10, share=0.5)
    with pytest.raises(OverloadedError) as refused:
        submit(redis_url, model, [("batch", 5, 1.0)], max_queue=10, share=0.5, drain=2.0)
    assert refused.value.code == "key_queue_full"
    assert refused.value.retry_after == 1.0  # one of its 5 must leave; it drains at 5/5 x 2 a second
    submit(redis_url, model, [("chat", 5, 1.0)] * 5, max_queue=10, share=0.5)
    with pytest.raises(OverloadedError) as full:
        submit(redis_url, model, [("other", 5, 1.0)], max_queue=10, share=0.5, drain=0.25)
    assert full.value.code == "queue_full"
    assert full.value.retry_after == 4.0  # one must leave, at 0.25 a second


def test_taken_jobs_are_pending_in_the_group_and_redelivered_from_there(redis_url: str, r: redis.Redis,
                                                                        model: str) -> None:
    ids = submit(redis_url, model, [("a", 5, 1.0)] * 3)
    stream = keys.request_stream(model)
    first = take(r, model, 2, consumer="dead")
    assert [j.id for j in first] == ids[:2]
    assert r.xpending(stream, keys.GROUP)["pending"] == 2
    claimed: Any = r.xautoclaim(stream, keys.GROUP, "alive", 0, "0-0", count=10)
    assert [json.loads(fields[JOB_FIELD.encode()])["id"] for _, fields in claimed[1]] == ids[:2]
    assert [j.id for j in take(r, model, 5, consumer="alive")] == ids[2:]  # nothing taken twice
    assert take(r, model, 5) == []
