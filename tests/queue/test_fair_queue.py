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
    stream, own_stream = keys.request_stream(model), keys.worker_stream(model, consumer)
    if not r.exists(own_stream):
        r.xgroup_create(own_stream, keys.GROUP, id="0", mkstream=True)
    reply: Any = r.register_script(fair.TAKE)(keys=[stream, own_stream], args=[
        keys.fair_queue(model), keys.GROUP, consumer, room, starve_ms, every, JOB_FIELD, fair.BELL_FIELD])
    jobs = []
    for _entry_id, flat in reply[1]:
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


def take_as_worker(r: redis.Redis, model: str, room: int, consumer: str, bells: list[str] | None = None
                   ) -> tuple[list[Job], list[Job]]:
    """The worker's take: its own stream's jobs, then the shared stream's (undelivered, then picked)."""
    reply: Any = r.register_script(fair.TAKE)(
        keys=[keys.request_stream(model), keys.worker_stream(model, consumer)],
        args=[keys.fair_queue(model), keys.GROUP, consumer, room, 60_000, 4, JOB_FIELD, fair.BELL_FIELD,
              *(bells or [])])
    own, shared = reply

    def decode(entries: list[Any]) -> list[Job]:
        return [Job.decode(dict(zip(f[::2], f[1::2], strict=True))) for _, f in entries]
    return decode(own), decode(shared)


def park(r: redis.Redis, model: str, consumer: str, room: int) -> None:
    """What a worker's intake does before blocking on its streams (its own stream's group made when it started;
    the shared stream's, the gateway's first submit makes)."""
    r.xgroup_create(keys.worker_stream(model, consumer), keys.GROUP, id="0", mkstream=True)
    r.zadd(keys.fair_queue(model) + "idle", {consumer: room})


def test_with_a_worker_parked_and_nothing_waiting_a_job_goes_straight_onto_the_stream(
        redis_url: str, r: redis.Redis, model: str) -> None:
    stream, prefix = keys.request_stream(model), keys.fair_queue(model)
    park(r, model, "w1", 2)
    first, second = submit(redis_url, model, [("a", 5, 1.0), ("a", 5, 1.0)])
    # the first went onto the stream and used one of the parked worker's slots; the second found it still
    # undelivered there, so it waits in the lists (a parked worker reads the stream at once: had it read
    # the first, the second would have gone straight on too)
    entries: Any = r.xrange(stream)
    assert [json.loads(f[JOB_FIELD.encode()])["id"] for _, f in entries] == [first]
    assert r.zscore(prefix + "idle", "w1") == 1.0
    assert int(r.get(prefix + "waiting") or 0) == 1 and r.llen(prefix + "bell") == 1
    own, shared = take_as_worker(r, model, 2, "w1")
    assert own == [] and [j.id for j in shared] == [first, second]
    assert r.zscore(prefix + "idle", "w1") is None  # a take unparks the worker
    assert r.llen(prefix + "bell") == 0  # the doorbell list counts the lists' waiting jobs (the autoscaler's)
    assert int(r.get(prefix + "taken") or 0) == 1  # only the second went through the fair pick


def test_nothing_goes_straight_on_while_jobs_wait_in_the_lists(redis_url: str, r: redis.Redis, model: str) -> None:
    stream, prefix = keys.request_stream(model), keys.fair_queue(model)
    waiting = submit(redis_url, model, [("a", 5, 1.0)])  # no worker parked: it waits
    park(r, model, "w1", 4)  # a worker parked just after its take found the lists empty
    later = submit(redis_url, model, [("b", 5, 1.0), ("b", 5, 1.0)])
    # both wait behind the first; one bell entry on the stream wakes the parked worker (not one per job)
    assert int(r.get(prefix + "waiting") or 0) == 3
    entries: Any = r.xrange(stream)
    assert [list(f) for _, f in entries] == [[fair.BELL_FIELD.encode()]]
    read: Any = r.xreadgroup(keys.GROUP, "w1", {stream: ">"}, count=4)  # the parked worker's blocking read
    bell_id = read[0][1][0][0].decode()
    own, shared = take_as_worker(r, model, 4, "w1", [bell_id])
    assert own == [] and [j.id for j in shared] == waiting + later
    assert r.xpending(stream, keys.GROUP)["pending"] == 3  # the three jobs; the bell acknowledged
    assert r.xlen(stream) == 3  # and deleted


def test_a_take_reads_the_workers_own_stream_first_and_skips_bells(redis_url: str, r: redis.Redis,
                                                                    model: str) -> None:
    stream, own_stream = keys.request_stream(model), keys.worker_stream(model, "w1")
    for s in (stream, own_stream):
        r.xgroup_create(s, keys.GROUP, id="0", mkstream=True)
    held = Job(id=uuid.uuid4().hex, model=model, kind="chat", messages=[{"role": "user", "content": "x"}],
               enqueued_at=time.time(), deadline=time.time() + 60)
    r.xadd(own_stream, held.encode())
    r.xadd(stream, {fair.BELL_FIELD: 1})
    queued = submit(redis_url, model, [("a", 5, 1.0)])
    own, shared = take_as_worker(r, model, 1, "w1")
    assert [j.id for j in own] == [held.id] and shared == []  # one free slot: the holder's job
    assert r.xlen(stream) == 1  # the bell is still there (not read: no room left)
    own, shared = take_as_worker(r, model, 3, "w1")
    assert own == [] and [j.id for j in shared] == queued
    assert r.xlen(stream) == 1 and r.xpending(stream, keys.GROUP)["pending"] == 1  # the bell read and deleted


def test_a_worker_does_not_park_while_jobs_wait_in_the_lists(redis_url: str, r: redis.Redis, model: str) -> None:
    """Parking and the blocking read go in one pipeline: with jobs waiting the worker is not parked and a bell
    entry makes its read return at once (else it would sleep out the read's timeout beside waiting work)."""
    stream, prefix = keys.request_stream(model), keys.fair_queue(model)
    submit(redis_url, model, [("a", 5, 1.0)] * 2)  # nobody parked: both wait in the lists
    parking = r.register_script(fair.PARK)
    args: list[str | int] = [prefix, "w1", 4, keys.GROUP, fair.BELL_FIELD]
    assert parking(keys=[stream], args=args) == 0
    assert parking(keys=[stream], args=args) == 0  # one bell entry at a time
    entries: Any = r.xrange(stream)
    assert [list(f) for _, f in entries] == [[fair.BELL_FIELD.encode()]]
    assert r.zscore(prefix + "idle", "w1") is None
    r.xgroup_create(keys.worker_stream(model, "w1"), keys.GROUP, id="0", mkstream=True)
    own, shared = take_as_worker(r, model, 4, "w1")
    assert own == [] and len(shared) == 2
    assert parking(keys=[stream], args=args) == 1  # nothing waits now: parked with its 4 free slots
    assert r.zscore(prefix + "idle", "w1") == 4.0
