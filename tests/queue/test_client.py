"""The gateway's reads of a response stream against a real Redis: a read that outlives its deadline
drops its connection, so its late reply is never taken for the next read's (no event twice)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from server.queue import keys, replies
from server.queue.client import QueueClient
from server.queue.events import Done, Event, Started, TextDelta
from server.queue.messages import Job
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

# appends an event, then keeps Redis busy for ARGV[3] microseconds: every other client waits, so a
# read sent now is answered (with that event) only after the caller's read deadline has passed
_WRITE_THEN_STALL = """
redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[2])
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  t = redis.call('TIME')
  if tonumber(t[1]) * 1000000 + tonumber(t[2]) - start > tonumber(ARGV[3]) then break end
end
return 1
"""


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[QueueClient]:
    # a read's deadline: 0.2 s + the 0.25 s block; without the event feed every wait is a blocking read
    client = QueueClient(redis_url, timeout_s=0.2, feed=False)
    yield client
    await client.close()


async def test_a_read_past_its_deadline_leaves_no_reply_behind_for_the_next(queue: QueueClient,
                                                                            redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    request_id = uuid.uuid4().hex
    stream = keys.response_stream(request_id)
    replies.send(client, replies.event(request_id, Started(1, "w", 3))
                 + replies.event(request_id, TextDelta(1, text="a")))
    reads = queue.follow(request_id, queued=True).batches
    seen: list[Event] = []
    pending: asyncio.Future[list[Event] | None] = asyncio.get_running_loop().create_future()
    try:
        first = await anext(reads)
        assert first is not None
        seen += first
        pending = asyncio.ensure_future(anext(reads))  # blocks in Redis: nothing new yet
        await asyncio.to_thread(wait_until, lambda: int(client.info("clients")["blocked_clients"]) >= 1,
                                timeout_s=10, what="the gateway's read to block")
        field, value = replies.event(request_id, TextDelta(1, text="b"))[0][7:9]
        await asyncio.to_thread(client.eval, _WRITE_THEN_STALL, 1, stream, field, value, 1_200_000)
        replies.send(client, replies.event(request_id, Done(1, "stop")))
        seen += await pending or []
        while not any(isinstance(e, Done) for e in seen):
            seen += await anext(reads) or []
    finally:
        if not pending.done():
            pending.cancel()
        await reads.aclose()
        client.delete(stream)
    texts = [e.text for e in seen if isinstance(e, TextDelta)]
    assert texts == ["a", "b"]  # "b" once, though two reads were sent while Redis stalled
    assert sum(isinstance(e, Done) for e in seen) == 1


async def test_a_queued_job_names_the_feed_of_the_gateway_that_queued_it(redis_url: str) -> None:
    """Its worker publishes its events there: the channel is stamped on the job by the client that follows it."""
    queue = QueueClient(redis_url, timeout_s=0.5)
    model = "m" + uuid.uuid4().hex[:8]
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model=model, kind="chat", enqueued_at=now, deadline=now + 60,
              messages=[{"role": "user", "content": "hi"}])
    try:
        await queue.submit(job, max_queue=4)
        entries: Any = await queue.commands.xrange(keys.request_stream(model))
    finally:
        await queue.commands.delete(keys.request_stream(model))
        await queue.close()
    ((_id, fields),) = entries
    assert Job.decode(fields).feed == queue.feed_channel is not None
    assert job.feed is None  # the caller's job is left as it was
