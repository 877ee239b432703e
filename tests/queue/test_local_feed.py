"""Events handed from a worker to a gateway on the same host (`queue/local_feed.py`): a real Unix datagram
socket in this process's network namespace, read on a running event loop; and a request following its
stream with events arriving both ways, out of order between the two, against a real Redis."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncGenerator

import pytest
import redis

from server.queue import follow, keys, local_feed, replies
from server.queue.client import QueueClient
from server.queue.events import Done, Event, Started, TextDelta
from server.queue.local_feed import LocalReceiver, LocalSender
from tests.queue.test_follow import collect


def frame(stream: str, entry_id: str, value: str) -> bytes:
    return f"{stream}\n{entry_id}\n{value}".encode()


class Received:
    """What a receiver delivered, with a wait for the n-th."""

    def __init__(self) -> None:
        self.events: list[tuple[bytes, bytes, bytes]] = []
        self._arrived = asyncio.Event()

    def __call__(self, stream: bytes, entry_id: bytes, value: bytes) -> None:
        self.events.append((stream, entry_id, value))
        self._arrived.set()

    async def count(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.events) < n:
                self._arrived.clear()
                await self._arrived.wait()


async def test_a_step_of_events_arrives_whole_and_in_order() -> None:
    channel = f"slm:feed:test-{uuid.uuid4().hex}"
    received = Received()
    receiver = LocalReceiver(channel, received)
    sender = LocalSender()
    assert receiver.start()
    try:
        assert sender.send(channel, [frame("s1", "1-1", '{"type":"started"}'), frame("s2", "1-4", '{"t":"a\\nb"}')])
        assert sender.send(channel, [frame("s1", "1-2", '{"type":"delta"}')])
        await received.count(3)
        assert received.events == [(b"s1", b"1-1", b'{"type":"started"}'), (b"s2", b"1-4", b'{"t":"a\\nb"}'),
                                   (b"s1", b"1-2", b'{"type":"delta"}')]
    finally:
        receiver.close()
        sender.close()


async def test_a_second_gateway_cannot_take_a_bound_channel() -> None:
    channel = f"slm:feed:test-{uuid.uuid4().hex}"
    first, second = LocalReceiver(channel, Received()), LocalReceiver(channel, Received())
    assert first.start()
    try:
        assert not second.start()
        assert not second.bound
    finally:
        first.close()


def test_a_gateway_not_on_this_host_is_remembered_as_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    sender = LocalSender()
    channel = f"slm:feed:nobody-{uuid.uuid4().hex}"
    tries: list[str] = []
    try:
        assert not sender.send(channel, [frame("s", "1-1", "{}")])  # no such socket in this namespace
        real_socket = sender._sock
        assert real_socket is not None

        class Counting:
            def sendto(self, data: bytes, address: str) -> int:
                tries.append(address)
                return real_socket.sendto(data, address)

        monkeypatch.setattr(sender, "_sock", Counting())
        assert not sender.send(channel, [frame("s", "1-2", "{}")])
        assert tries == []  # not tried again before RETRY_S
        monkeypatch.setattr(local_feed.time, "monotonic", lambda: 1e12)  # RETRY_S later
        assert not sender.send(channel, [frame("s", "1-3", "{}")])
        assert tries == [local_feed.address(channel)]
    finally:
        monkeypatch.undo()
        sender.close()


def test_a_gateway_whose_queue_is_full_is_not_waited_for() -> None:
    channel = f"slm:feed:test-{uuid.uuid4().hex}"
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    idle.bind(local_feed.address(channel))
    sender = LocalSender()
    try:
        sent = 0
        while sender.send(channel, [frame("s", f"1-{sent + 1}", "{}")]):
            sent += 1
            assert sent < 100_000
        assert sent > 0
        # a full queue is a moment, not a verdict: once read, the next goes again
        while True:
            try:
                idle.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        assert sender.send(channel, [frame("s", "1-x", "{}")])
    finally:
        idle.close()
        sender.close()


def test_a_step_too_big_for_one_datagram_is_left_to_redis() -> None:
    channel = f"slm:feed:test-{uuid.uuid4().hex}"
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    idle.bind(local_feed.address(channel))
    sender = LocalSender()
    try:
        assert not sender.send(channel, [frame("s", "1-1", "x" * local_feed.MAX_DATAGRAM)])
        assert sender.send(channel, [frame("s", "1-2", "x" * 1000)])
    finally:
        idle.close()
        sender.close()


def test_a_malformed_datagram_tail_is_dropped() -> None:
    assert local_feed.frames(b"s\n1-1\n{}\ns\n1-2") == [(b"s", b"1-1", b"{}")]
    assert local_feed.frames(b"") == []


# -- a follower with events arriving both ways (a real Redis) ---------------------------------------

def numbered(rid: str, event: Event, number: int, feed: str | None) -> list[replies.Command]:
    return replies.event(rid, event, feed, number)


def handed(commands: list[replies.Command]) -> replies.Handover:
    (words,) = commands
    found = replies.handover(words)
    assert found is not None
    return found


async def next_events(batches: AsyncGenerator[list[Event] | None, None]) -> list[Event]:
    """The next batch that holds events (ticks skipped)."""
    async with asyncio.timeout(20):
        while True:
            batch = await anext(batches)
            if batch:
                return batch


async def live_follower(queue: QueueClient, rid: str) -> follow.Follower:
    """A request following `rid` from before its job is queued, once the feed's subscription is live."""
    assert queue.feed is not None
    reads = follow.StreamReads(queue.followers.connection_pool, keys.response_stream(rid), 1.0)
    follower = follow.Follower(reads, queue.feed)
    async with asyncio.timeout(10):
        while not queue.feed.live:
            await asyncio.sleep(0.01)
    return follower


@pytest.mark.integration
async def test_events_handed_over_reach_the_request_without_redis(queue: QueueClient, client: redis.Redis) -> None:
    assert queue.feed is not None and queue.feed_channel is not None
    rid = uuid.uuid4().hex
    follower = await live_follower(queue, rid)
    sender = LocalSender()
    try:
        events: list[Event] = [Started(1, "w", 3), *(TextDelta(1, text=str(i), tokens=1) for i in range(20)),
                               Done(1, "stop")]
        frames_ = [handed(numbered(rid, e, n, queue.feed_channel)).frame for n, e in enumerate(events, 1)]
        assert sender.send(queue.feed_channel, frames_[:1])  # the channel is bound once the request follows
        for i in range(1, len(frames_), 4):
            assert sender.send(queue.feed_channel, frames_[i:i + 4])
        seen = await collect(follower.batches)
    finally:
        sender.close()
        await follower.close()
    assert [e.text for e in seen if isinstance(e, TextDelta)] == [str(i) for i in range(20)]
    assert sum(isinstance(e, Started) for e in seen) == 1
    assert client.exists(keys.response_stream(rid)) == 0  # nothing was written to Redis: it came straight


@pytest.mark.integration
async def test_an_event_that_overtakes_an_earlier_one_waits_for_it(queue: QueueClient, client: redis.Redis) -> None:
    """Event 3 handed over while event 2 went by Redis (its datagram did not go): 3 is held until 2 is
    read from the stream, and each is taken once, in order."""
    assert queue.feed is not None and queue.feed_channel is not None
    rid = uuid.uuid4().hex
    follower = await live_follower(queue, rid)
    sender = LocalSender()
    feed = queue.feed_channel
    try:
        one = numbered(rid, Started(1, "w", 3), 1, feed)
        two = numbered(rid, TextDelta(1, text="two", tokens=1), 2, feed)
        three = numbered(rid, TextDelta(1, text="three", tokens=1), 3, feed)
        four = numbered(rid, Done(1, "stop"), 4, feed)
        assert sender.send(feed, [handed(one).frame])
        assert [type(e) for e in await next_events(follower.batches)] == [Started]
        # two: written to the stream, its publication not (yet) heard; three: handed over at once
        await asyncio.to_thread(replies.send, client, [handed(two).unpublished])
        assert sender.send(feed, [handed(three).frame])
        second = await next_events(follower.batches)
        assert [e.text for e in second if isinstance(e, TextDelta)] == ["two", "three"]
        assert sender.send(feed, [handed(three).frame, handed(four).frame])  # three again: taken once
        rest = await collect(follower.batches)
        await asyncio.to_thread(replies.send, client, two)  # two written again, published: refused by its id
    finally:
        sender.close()
        await follower.close()
    assert [type(e) for e in rest] == [Done]
    assert [entry_id for entry_id, _ in client.xrange(keys.response_stream(rid))] == [b"1-2"]


def test_a_new_attempt_starts_its_numbering_again() -> None:
    reads = follow.StreamReads(None, keys.response_stream("x"), 1.0)
    assert reads.take_pushed([(b"1-1", b"a"), (b"1-2", b"b")]) == [(b"1-1", b"a"), (b"1-2", b"b")]
    assert reads.take_pushed([(b"3-2", b"d")]) == []  # attempt 3's second event, before its first
    assert reads.holding
    assert reads.take_pushed([(b"3-1", b"c")]) == [(b"3-1", b"c"), (b"3-2", b"d")]
    assert reads.take_pushed([(b"1-3", b"late")]) == []  # an earlier attempt's: never taken
    assert not reads.holding
    # ids of Redis's clock (unnumbered writers) go by order alone
    assert reads.take_pushed([(b"1733000000000-5", b"e")]) == [(b"1733000000000-5", b"e")]
