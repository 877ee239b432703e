"""The event feed's parts: stream ids in Redis's order, a mailbox's waits, and what a worker's event
script publishes (against a real Redis): the stream, the entry id and the value, and nothing for an
attempt the fence refuses."""

from __future__ import annotations

import asyncio
import uuid
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


async def test_a_cancelled_wait_leaves_the_mailbox_as_it_was() -> None:
    box = Mailbox()
    waiting = asyncio.ensure_future(box.take(5))
    await asyncio.sleep(0)  # let it start waiting
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    box.put((b"3-0", b"d"))  # no waiter left behind to wake
    assert await box.take(5) == [(b"3-0", b"d")]
    assert await box.take(0) is None


@pytest.mark.integration
def test_an_event_is_published_with_its_stream_and_entry_id_unless_fenced_off(client: redis.Redis) -> None:
    channel = keys.event_feed(uuid.uuid4().hex)
    rid = uuid.uuid4().hex
    sub = client.pubsub()
    sub.subscribe(channel)
    try:
        assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        assert replies.mark_running(client, rid, 2, 60)
        replies.send(client, replies.event(rid, TextDelta(1, text="late"), channel))  # an older attempt: fenced
        replies.send(client, replies.event(rid, Started(2, "w", 3), channel))
        # the first message is the second write's: the fenced one, refused in the same script, published nothing
        message: Any = sub.get_message(timeout=5)
        stored: Any = client.xrange(keys.response_stream(rid))
    finally:
        sub.close()
        client.delete(keys.response_stream(rid), keys.job_running(rid))
    stream, entry_id, value = message["data"].split(b"\n", 2)
    assert stream == keys.response_stream(rid).encode()
    ((stored_id, fields),) = stored
    assert entry_id == stored_id
    assert value == fields[b"e"]
    assert decode_event_value(value)["type"] == "started"
