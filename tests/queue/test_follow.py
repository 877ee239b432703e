"""Following a response stream through the gateway's event feed, against a real Redis: events come
through the subscription without a read of the stream per event, in order and each once, whether
they were written before the request began following, while its subscription was lost, or on a
channel the feed never heard."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.queue import follow, keys, replies
from server.queue.client import QueueClient
from server.queue.events import Done, Event, Started, TextDelta
from server.queue.feed import Entry, EventFeed
from tests.deploy.redis_process import running_redis

pytestmark = pytest.mark.integration


class CountedReads(follow.StreamReads):
    """The stream's reads, counted."""

    def __init__(self, pool: Any, stream: str, read_timeout_s: float) -> None:
        super().__init__(pool, stream, read_timeout_s)
        self.count = 0

    async def read(self, block_ms: int | None) -> list[Entry]:
        self.count += 1
        return await super().read(block_ms)


def following(queue: QueueClient, request_id: str) -> tuple[CountedReads, AsyncGenerator[list[Event] | None, None]]:
    reads = CountedReads(queue.followers.connection_pool, keys.response_stream(request_id), 1.0)
    return reads, follow.Follower(reads, queue.feed, queued=True).batches


async def collect(batches: AsyncGenerator[list[Event] | None, None]) -> list[Event]:
    """Every event up to `done` (ticks skipped), with a deadline so a lost event fails rather than hangs."""
    seen: list[Event] = []
    async with asyncio.timeout(20):
        while not any(isinstance(e, Done) for e in seen):
            seen += await anext(batches) or []
    return seen


async def feed_live(feed: EventFeed, generation: int = 1) -> None:
    """Poll (with a deadline) until the feed's `generation`-th subscription is live."""
    async with asyncio.timeout(10):
        while not (feed.live and feed.generation >= generation):
            await asyncio.sleep(0.01)


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


async def send(client: redis.Redis, commands: list[replies.Command]) -> None:
    await asyncio.to_thread(replies.send, client, commands)


async def started(queue: QueueClient, client: redis.Redis, rid: str) -> tuple[
        CountedReads, AsyncGenerator[list[Event] | None, None], list[Event]]:
    """Follow `rid` from before the feed is live, then see its `started` (published on the feed)."""
    assert queue.feed is not None
    reads, batches = following(queue, rid)
    first = asyncio.ensure_future(anext(batches))  # follows, then catches up once the feed is live
    await feed_live(queue.feed)
    await send(client, replies.event(rid, Started(1, "w", 3), queue.feed_channel))
    return reads, batches, await first or []


async def deltas(queue: QueueClient, client: redis.Redis, rid: str, numbers: range) -> None:
    for i in numbers:
        await send(client, replies.event(rid, TextDelta(1, text=str(i), tokens=1), queue.feed_channel))


async def finish(queue: QueueClient, client: redis.Redis, rid: str,
                 batches: AsyncGenerator[list[Event] | None, None]) -> list[Event]:
    """Write `done` and take every event up to it."""
    try:
        await send(client, replies.event(rid, Done(1, "stop"), queue.feed_channel))
        return await collect(batches)
    finally:
        await batches.aclose()


async def test_events_come_through_the_feed_without_a_read_each(queue: QueueClient, client: redis.Redis) -> None:
    rid = uuid.uuid4().hex
    reads, batches, seen = await started(queue, client, rid)
    await deltas(queue, client, rid, range(40))
    seen += await finish(queue, client, rid, batches)
    assert texts(seen) == [str(i) for i in range(40)]
    assert sum(isinstance(e, Started) for e in seen) == 1
    assert reads.count <= 3  # the catch-ups only (before the feed was live, once it was), not one per event


async def test_events_written_before_following_are_caught_up_once(queue: QueueClient, client: redis.Redis) -> None:
    assert queue.feed is not None
    rid = uuid.uuid4().hex
    warm_id = uuid.uuid4().hex  # a request before it: the subscription is made and live by now
    _, warm = following(queue, warm_id)
    await send(client, replies.event(warm_id, Done(1, "stop"), queue.feed_channel))
    try:
        await collect(warm)
    finally:
        await warm.aclose()
    assert queue.feed.live
    # published with no mailbox for them yet: only the stream has them
    await send(client, replies.event(rid, Started(1, "w", 3), queue.feed_channel)
               + replies.event(rid, TextDelta(1, text="a"), queue.feed_channel))
    _, batches = following(queue, rid)
    try:
        seen = await anext(batches) or []
        await send(client, replies.event(rid, TextDelta(1, text="b"), queue.feed_channel)
                   + replies.event(rid, Done(1, "stop"), queue.feed_channel))
        seen += await collect(batches)
    finally:
        await batches.aclose()
    assert texts(seen) == ["a", "b"]


async def test_a_lost_subscription_is_made_again_and_nothing_is_lost_or_repeated(
        queue: QueueClient, client: redis.Redis) -> None:
    feed = queue.feed
    assert feed is not None
    rid = uuid.uuid4().hex
    _, batches, seen = await started(queue, client, rid)
    try:
        before = feed.generation
        killed = await asyncio.to_thread(client.client_kill_filter, _type="pubsub")
        assert killed >= 1
        # written while the subscription is down or being made again: some only in the stream
        await deltas(queue, client, rid, range(20))
        await feed_live(feed, before + 1)
        await deltas(queue, client, rid, range(20, 30))
    except BaseException:
        await batches.aclose()
        raise
    seen += await finish(queue, client, rid, batches)
    assert texts(seen) == [str(i) for i in range(30)]
    assert feed.generation == before + 1


async def test_events_the_feed_never_brings_still_arrive_and_the_subscription_is_made_again(
        queue: QueueClient, client: redis.Redis) -> None:
    """A subscription that hears nothing (as one over a cut link would): the silent wait's read finds
    the events in the stream, and the feed, suspected, subscribes again."""
    feed = queue.feed
    assert feed is not None
    rid = uuid.uuid4().hex
    _, batches, seen = await started(queue, client, rid)
    try:
        await send(client, replies.event(rid, TextDelta(1, text="x"), queue.feed_channel))
        while not texts(seen):  # once it has this, it has caught up under the live subscription
            seen += await anext(batches) or []
        before = feed.generation
        # published nowhere: only the stream has them
        await send(client, replies.event(rid, TextDelta(1, text="a")) + replies.event(rid, Done(1, "stop")))
        seen += await collect(batches)
        await feed_live(feed, before + 1)
    finally:
        await batches.aclose()
    assert texts(seen) == ["x", "a"]


async def test_a_redis_user_without_pub_sub_rights_still_gets_every_event(tmp_path: Path) -> None:
    """An ACL user's channels are closed by default (Redis 7): its workers' publishes fail inside the
    event script without failing the event, and its gateway, unable to subscribe, reads the stream."""
    with running_redis([], tmp_path / "acl") as (port, _):
        admin = redis.Redis(port=port)
        admin.acl_setuser("slm", enabled=True, passwords=["+p4ss"], keys=["*"], commands=["+@all"])
        url = f"redis://slm:p4ss@127.0.0.1:{port}/0"
        worker = redis.Redis.from_url(url)
        queue = QueueClient(url, timeout_s=0.5)
        rid = uuid.uuid4().hex
        _, batches = following(queue, rid)
        try:
            await send(worker, replies.event(rid, Started(1, "w", 3), queue.feed_channel)
                       + replies.event(rid, TextDelta(1, text="a"), queue.feed_channel)
                       + replies.event(rid, Done(1, "stop"), queue.feed_channel))
            seen = await collect(batches)
            assert texts(seen) == ["a"]
            assert queue.feed is not None and not queue.feed.live
        finally:
            await batches.aclose()
            await queue.close()
            worker.close()
            admin.close()


async def test_a_request_followed_before_its_job_is_queued_never_reads_its_stream(
        queue: QueueClient, client: redis.Redis) -> None:
    feed = queue.feed
    assert feed is not None
    warm_id = uuid.uuid4().hex  # a request before it: the subscription is live by now
    _, warm, _ = await started(queue, client, warm_id)
    await finish(queue, client, warm_id, warm)
    rid = uuid.uuid4().hex
    reads = CountedReads(queue.followers.connection_pool, keys.response_stream(rid), 1.0)
    follower = follow.Follower(reads, feed)  # then the job is queued, and its worker writes:
    await send(client, replies.event(rid, Started(1, "w", 3), queue.feed_channel))
    await deltas(queue, client, rid, range(5))
    seen = await finish(queue, client, rid, follower.batches)
    await follower.close()
    assert texts(seen) == [str(i) for i in range(5)]
    assert reads.count == 0
    assert feed.following == 0


async def test_a_follower_whose_job_was_never_queued_gives_its_mailbox_back(queue: QueueClient) -> None:
    assert queue.feed is not None
    follower = queue.follow(uuid.uuid4().hex)  # a refused admission: never started
    assert queue.feed.following == 1
    await follower.close()
    assert queue.feed.following == 0


async def test_a_message_of_another_publisher_on_the_channel_is_ignored(queue: QueueClient,
                                                                       client: redis.Redis) -> None:
    feed = queue.feed
    assert feed is not None and queue.feed_channel is not None
    rid = uuid.uuid4().hex
    _, batches, seen = await started(queue, client, rid)
    generation = feed.generation
    await asyncio.to_thread(client.publish, queue.feed_channel, b"not an event")
    await deltas(queue, client, rid, range(3))
    seen += await finish(queue, client, rid, batches)
    assert texts(seen) == ["0", "1", "2"]
    assert feed.live and feed.generation == generation  # the subscription lived on


async def test_reads_of_a_redis_that_is_away_are_paced_until_the_outage_grace_runs_out() -> None:
    """Reads that fail at once (during a failover the sentinels name no master for 2-3 s; here a port
    nothing listens on, connected without retries) back off rather than spin (thousands of reads per
    request across a failover before), ticking after each, and give up after the grace."""
    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    away = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1.0,
                               retry=Retry(NoBackoff(), 0))
    reads = CountedReads(away.connection_pool, keys.response_stream(uuid.uuid4().hex), 1.0)
    batches = follow.event_batches(reads, None, None, -1)
    ticks = 0
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with pytest.raises(follow.READ_FAILURES):
            async with asyncio.timeout(follow.OUTAGE_GRACE_S + 5):
                while True:
                    assert await anext(batches) is None
                    ticks += 1
    finally:
        await batches.aclose()
        await away.aclose()
    assert loop.time() - began >= follow.OUTAGE_GRACE_S
    assert ticks == reads.count - 1  # every failed read ticked, except the one past the grace
    most = 2 + follow.OUTAGE_GRACE_S / follow.RETRY_FIRST_S  # were every pause the shortest
    assert 3 <= reads.count <= most, reads.count
