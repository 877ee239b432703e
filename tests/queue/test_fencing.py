"""Writes that a cut link may deliver late, or a client retry, against a real Redis: an older attempt's
events and ack land on nothing once a newer attempt holds the request; the running mark only rises;
a worker takes back only its own mark; a retried admission queues nothing twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from server.queue import keys, replies
from server.queue.client import QueueClient
from server.queue.events import Started, TextDelta
from server.queue.messages import Job, SamplingParams, decode_event


def attempts_written(client: redis.Redis, request_id: str) -> list[int]:
    entries: Any = client.xrange(keys.response_stream(request_id))
    return [int(decode_event(fields).get("attempt", 0)) for _, fields in entries]


def test_an_older_attempts_events_land_on_nothing(client: redis.Redis) -> None:
    rid = uuid.uuid4().hex
    replies.send(client, replies.event(rid, Started(1, "a", 3)))  # no mark yet: written
    assert replies.mark_running(client, rid, 1, 60)
    replies.send(client, replies.event(rid, TextDelta(1, text="x")))
    assert replies.mark_running(client, rid, 2, 60)  # another worker took it over
    replies.send(client, replies.event(rid, TextDelta(1, text="late")))  # the cut-off worker's late write
    replies.send(client, replies.event(rid, Started(2, "b", 3)))
    assert attempts_written(client, rid) == [1, 1, 2]
    assert client.ttl(keys.response_stream(rid)) > 0


def test_the_mark_only_rises_and_is_taken_back_only_by_its_attempt(client: redis.Redis) -> None:
    rid = uuid.uuid4().hex
    assert replies.mark_running(client, rid, 2, 60)
    assert not replies.mark_running(client, rid, 1, 60)  # a late SET of attempt 1
    assert client.get(keys.job_running(rid)) == b"2"
    replies.unmark_running(client, rid, 1)
    assert client.get(keys.job_running(rid)) == b"2"
    replies.unmark_running(client, rid, 2)
    assert client.get(keys.job_running(rid)) is None


def test_an_older_attempts_ack_leaves_the_entry_to_the_newer(client: redis.Redis) -> None:
    stream = f"slm:req:fence-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    added: Any = client.xadd(stream, {"j": "{}"})
    entry = added.decode()
    client.xreadgroup(keys.GROUP, "w1", {stream: ">"})
    rid = uuid.uuid4().hex
    replies.mark_running(client, rid, 2, 60)
    replies.send(client, replies.ack(stream, entry, request_id=rid, attempt=1))
    assert client.xlen(stream) == 1 and client.xpending(stream, keys.GROUP)["pending"] == 1
    replies.send(client, replies.ack(stream, entry, request_id=rid, attempt=2))
    assert client.xlen(stream) == 0 and client.xpending(stream, keys.GROUP)["pending"] == 0
    client.delete(stream)


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[QueueClient]:
    q = QueueClient(redis_url)
    yield q
    await q.close()


async def test_a_retried_admission_queues_nothing_twice(queue: QueueClient, client: redis.Redis) -> None:
    model = f"fence-{uuid.uuid4().hex[:8]}"
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model=model, kind="chat", enqueued_at=now, deadline=now + 60,
              params=SamplingParams(max_tokens=1), messages=[{"role": "user", "content": "hi"}])
    await queue.submit(job, max_queue=8)
    await queue.submit(job, max_queue=8)  # the same job again: its first reply was lost
    assert client.xlen(keys.request_stream(model)) == 1
    other = job.model_copy(update={"id": uuid.uuid4().hex})
    await queue.submit(other, max_queue=8)
    assert client.xlen(keys.request_stream(model)) == 2
    client.delete(keys.request_stream(model), keys.job_admitted(job.id), keys.job_admitted(other.id))
