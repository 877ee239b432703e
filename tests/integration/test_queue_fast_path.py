"""The queue's fast path, against a Redis of its own (its command counters must be this test's alone):
a worker's batch of replies wakes a blocked gateway once, with every event; the gateway knows when
more of an answer is already in hand; the intake takes a fresh request without looking up a cancel
flag that cannot exist yet, and still screens out an older request whose client left."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from server.backends.base import Delta
from server.backends.local import LocalGeneration
from server.embedded_redis import EmbeddedRedis
from server.queue import keys, replies
from server.queue.client import Fairness, QueueClient
from server.queue.messages import Job, SamplingParams, decode_event, encode_event
from server.worker.holdings import Holdings
from server.worker.intake import UNCANCELLED_AGE_S, Intake, IntakeConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_redis() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def client(own_redis: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(own_redis)
    yield c
    c.close()


@pytest.fixture
async def queue(own_redis: str) -> AsyncIterator[QueueClient]:
    q = QueueClient(own_redis)
    yield q
    await q.close()


def job(model: str, *, age_s: float = 0.0) -> Job:
    enqueued = time.time() - age_s
    return Job(id=uuid.uuid4().hex, model=model, kind="chat", enqueued_at=enqueued, deadline=enqueued + 60,
               params=SamplingParams(max_tokens=1), messages=[{"role": "user", "content": "hi"}])


def calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_one_batch_of_replies_wakes_a_blocked_reader_once_with_every_event(client: redis.Redis) -> None:
    request_id = uuid.uuid4().hex
    stream = keys.response_stream(request_id)
    got: list[Any] = []
    reader = redis.Redis(connection_pool=client.connection_pool)
    thread = threading.Thread(target=lambda: got.append(reader.xread({stream: "0-0"}, block=10_000)))
    thread.start()
    wait_until(lambda: int(client.info("clients")["blocked_clients"]) >= 1, timeout_s=10,
               what="the reader to block on the response stream")
    replies.send(client, replies.event_fields(request_id, {"type": "delta", "text": "Hi", "tokens": 1, "attempt": 1})
                 + replies.event_fields(request_id, {"type": "done", "finish_reason": "length", "attempt": 1}))
    thread.join(10)
    ((_name, entries),) = got[0]
    assert [decode_event(fields)["type"] for _, fields in entries] == ["delta", "done"]
    assert 0 < client.ttl(stream) <= replies.RESPONSE_TTL_S


async def test_the_gateway_knows_when_more_of_the_answer_is_already_in_hand(
        client: redis.Redis, queue: QueueClient) -> None:
    j = job("m" + uuid.uuid4().hex[:8])
    stream = keys.response_stream(j.id)
    client.xadd(stream, encode_event({"type": "started", "attempt": 1, "worker": "w1", "prompt_tokens": 3}))
    gen = LocalGeneration(queue, j, stall_timeout_s=5, lease_s=5)
    await gen.start()
    assert not gen.buffered()
    replies.send(client, replies.event_fields(j.id, {"type": "delta", "text": "a", "tokens": 1, "attempt": 1})
                 + replies.event_fields(j.id, {"type": "delta", "text": "b", "tokens": 1, "attempt": 1})
                 + replies.event_fields(j.id, {"type": "done", "finish_reason": "length", "attempt": 1,
                                        "usage": {"prompt_tokens": 3, "completion_tokens": 2}}))
    seen: list[tuple[str, bool]] = []
    async for item in gen.deltas():
        assert isinstance(item, Delta)
        seen.append((item.text, gen.buffered()))
    await gen.close()
    assert seen == [("a", True), ("b", True)]  # after "b", `done` was in hand too
    assert gen.result.completion_tokens == 2 and gen.result.finish_reason == "length"


def run_intake(client: redis.Redis, model: str, *, fair_queue: bool = False) -> Intake:
    intake = Intake(client, IntakeConfig(model=model, worker_id=f"{model}-w1", lease_s=30, max_deliveries=3,
                                         fair=fair_queue), Holdings(), room=lambda: 4)
    intake.ensure_group()
    intake.start()
    return intake


def test_a_fresh_request_is_taken_without_a_cancel_lookup(client: redis.Redis) -> None:
    model = "m" + uuid.uuid4().hex[:8]
    intake = run_intake(client, model)
    try:
        before = calls(client, "exists")
        fresh = job(model)
        client.xadd(keys.request_stream(model), fresh.encode())
        taken = intake.inbox.get(timeout=10)
        assert taken.job.id == fresh.id
        assert calls(client, "exists") == before
    finally:
        intake.stop()
        intake.join(5)


def test_an_older_request_whose_client_left_is_screened_out(client: redis.Redis) -> None:
    model = "m" + uuid.uuid4().hex[:8]
    stream = keys.request_stream(model)
    intake = run_intake(client, model)
    try:
        gone = job(model, age_s=UNCANCELLED_AGE_S + 1)
        client.set(keys.cancel_flag(gone.id), 1)
        before = calls(client, "exists")
        client.xadd(stream, gone.encode())
        wait_until(lambda: client.xlen(stream) == 0, timeout_s=10, what="the cancelled request to be acknowledged")
        assert calls(client, "exists") == before + 1
        assert intake.inbox.empty()
        assert client.xpending(stream, keys.GROUP)["pending"] == 0
    finally:
        intake.stop()
        intake.join(5)


async def test_a_parked_fair_worker_gets_a_job_straight_off_the_stream(client: redis.Redis,
                                                                     queue: QueueClient) -> None:
    """Nothing waiting and a worker parked: the admission puts the job on the model's stream, where the
    worker's blocking read returns it; no fair pick, no doorbell round trip."""
    model = "m" + uuid.uuid4().hex[:8]
    prefix = keys.fair_queue(model)
    await queue.ensure_group(model)
    intake = run_intake(client, model, fair_queue=True)
    try:
        wait_until(lambda: client.zscore(prefix + "idle", f"{model}-w1") == 4.0, timeout_s=10,
                   what="the fair intake to park with its 4 free slots")
        fresh = job(model)
        went = await queue.submit(fresh, max_queue=10, fairness=Fairness("k"))
        assert went == keys.request_stream(model)
        taken = intake.inbox.get(timeout=10)
        assert taken.job.id == fresh.id and taken.stream == keys.request_stream(model)
        assert int(client.get(prefix + "taken") or 0) == 0 and int(client.get(prefix + "waiting") or 0) == 0
        assert client.llen(prefix + "bell") == 0
    finally:
        intake.stop()
        intake.join(5)


async def test_a_parked_worker_survives_its_own_stream_deleted_under_it(client: redis.Redis,
                                                                       queue: QueueClient) -> None:
    """A peer deletes an empty own stream it takes for a gone worker's (a worker that has not beaten its first
    heartbeat yet): the blocked read ends with UNBLOCKED; the intake makes the stream again and goes on."""
    model = "m" + uuid.uuid4().hex[:8]
    prefix = keys.fair_queue(model)
    await queue.ensure_group(model)
    intake = run_intake(client, model, fair_queue=True)
    try:
        parked = f"{model}-w1"
        wait_until(lambda: client.zscore(prefix + "idle", parked) == 4.0 and
                   int(client.info("clients")["blocked_clients"]) >= 1, timeout_s=10, what="the intake to park")
        own = keys.worker_stream(model, parked)
        held = job(model)
        pipe = client.pipeline(transaction=True)  # deleted, then a holder's job queued on it (a fresh stream)
        pipe.delete(own)
        pipe.xadd(own, held.encode())
        pipe.execute()
        wait_until(lambda: client.xinfo_groups(own) != [], timeout_s=10,
                   what="the intake to make its own stream's group again")
        assert intake.alive() and intake.failure is None
        fresh = job(model)
        await queue.submit(fresh, max_queue=10, fairness=Fairness("k"))
        taken = {intake.inbox.get(timeout=10).job.id for _ in range(2)}
        assert taken == {held.id, fresh.id}  # the holder's job, queued on the new stream, is not lost either
    finally:
        intake.stop()
        intake.join(5)
