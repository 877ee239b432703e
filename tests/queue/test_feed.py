"""The event feed's parts: stream ids in Redis's order, a mailbox's waits, and what a worker's event
script publishes (against a real Redis): the stream, the entry id and the value, and nothing for an
attempt the fence refuses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from server.queue import keys, replies
from server.queue.events import Started, TextDelta
from server.queue.feed import Mailbox, entry_order
from server.queue.messages import decode_event_value


def test_entry_ids_sort_as_redis_orders_them() -> None:
    ids = [b"1700000000000-10", b"1700000000000-9", b"1700000000001-0", b"999-5"]
    assert sorted(ids, key=entry_order) == [b"999-5", b"1700000000000-9", b"1700000000000-10", b"1700000000001-0"]


async def test_a_mailbox_hands_over_what_arrived_in_order_or_says_how_its_wait_ended() -> None:
    box = Mailbox()
    assert await box.take(0.01) is None  # ran out
    box.put((b"1-0", b"a"))
    box.put((b"1-1", b"b"))
    assert await box.take(1) == [(b"1-0", b"a"), (b"1-1", b"b")]
    waiting = asyncio.ensure_future(box.take(5))
    await asyncio.sleep(0)  # let it start waiting
    box.wake()
    assert await waiting == []  # woken with nothing: the subscription changed
    waiting = asyncio.ensure_future(box.take(5))
    await asyncio.sleep(0)
    box.put((b"2-0", b"c"))
    assert await waiting == [(b"2-0", b"c")]


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@dataclass
class Feed:
    """A gateway's channel, subscribed, and one request whose keys go at the end."""

    channel: str
    sub: Any
    rid: str


@pytest.fixture
def feed(client: redis.Redis) -> Iterator[Feed]:
    channel = keys.event_feed(uuid.uuid4().hex)
    sub = client.pubsub()
    sub.subscribe(channel)
    rid = uuid.uuid4().hex
    try:
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        yield Feed(channel, sub, rid)
    finally:
        sub.close()
        client.delete(keys.response_stream(rid), keys.job_running(rid))


@pytest.mark.integration
def test_an_event_is_published_with_its_stream_and_entry_id_unless_fenced_off(client: redis.Redis,
                                                                              feed: Feed) -> None:
    channel, rid = feed.channel, feed.rid
    assert replies.mark_running(client, rid, 2, 60)
    replies.send(client, replies.event(rid, TextDelta(1, text="late"), channel))  # an older attempt: fenced
    replies.send(client, replies.event(rid, Started(2, "w", 3), channel))
    # the first message is the second write's: the fenced one, refused in the same script, published nothing
    message: Any = feed.sub.get_message(timeout=5)
    stored: Any = client.xrange(keys.response_stream(rid))
    stream, entry_id, value = message["data"].split(b"\n", 2)
    assert stream == keys.response_stream(rid).encode()
    ((stored_id, fields),) = stored
    assert entry_id == stored_id
    assert value == fields[b"e"]
    assert decode_event_value(value)["type"] == "started"


@pytest.mark.integration
def test_a_held_event_is_published_first_by_the_next_one_under_its_own_entry_id(client: redis.Redis,
                                                                                feed: Feed) -> None:
    channel, rid = feed.channel, feed.rid
    assert replies.mark_running(client, rid, 1, 60)
    replies.send(client, replies.event(rid, Started(1, "w", 3), None))  # `held_event`: on the stream only
    held = Started(1, "w", 3, held_ms=6.5)
    replies.send(client, replies.event(rid, TextDelta(1, text="hi"), channel, held))
    messages: list[Any] = [feed.sub.get_message(timeout=5), feed.sub.get_message(timeout=5)]
    (started_id, started_fields), (delta_id, delta_fields) = client.xrange(keys.response_stream(rid))
    first, second = (m["data"].split(b"\n", 2) for m in messages)
    # the held `started` under its stream entry's id, with how long it was held; then the delta as stored
    assert first[:2] == [keys.response_stream(rid).encode(), started_id]
    assert decode_event_value(first[2]) == {**decode_event_value(started_fields[b"e"]), "held_ms": 6.5}
    assert second == [keys.response_stream(rid).encode(), delta_id, delta_fields[b"e"]]


@pytest.mark.integration
def test_a_fenced_off_event_publishes_nothing_it_held(client: redis.Redis, feed: Feed) -> None:
    channel, rid = feed.channel, feed.rid
    assert replies.mark_running(client, rid, 1, 60)
    replies.send(client, replies.event(rid, Started(1, "w", 3), None))
    assert replies.mark_running(client, rid, 2, 60)  # another worker took the request over
    replies.send(client, replies.event(rid, TextDelta(1, text="late"), channel, Started(1, "w", 3, held_ms=1)))
    replies.send(client, replies.event(rid, Started(2, "w2", 3), channel))
    message: Any = feed.sub.get_message(timeout=5)
    assert decode_event_value(message["data"].split(b"\n", 2)[2])["worker"] == "w2"  # the first: nothing late
