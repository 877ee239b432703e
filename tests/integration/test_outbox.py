"""The worker's outbox against a real Redis: writes leave in the order they were queued, what
piles up during a round trip goes out together, and a failure is kept for the decode thread."""

from __future__ import annotations

import uuid

import pytest
import redis

from server.embedded_redis import EmbeddedRedis
from server.queue import keys, replies
from server.queue.messages import decode_event
from server.worker.outbox import Outbox

pytestmark = pytest.mark.integration


def test_writes_arrive_in_order_and_all_of_them(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(client)
    outbox.start()
    request_id = uuid.uuid4().hex
    try:
        for i in range(500):
            outbox.put(replies.event_fields(request_id, {"type": "delta", "text": str(i)}))
        assert outbox.flush(30)
        assert outbox.error is None
    finally:
        outbox.close()
    stream = keys.response_stream(request_id)
    assert [decode_event(fields)["text"] for _, fields in client.xrange(stream)] == [str(i) for i in range(500)]
    assert 0 < client.ttl(stream) <= replies.RESPONSE_TTL_S


def test_a_failed_write_is_kept_until_reset_and_drops_what_follows() -> None:
    server = EmbeddedRedis()
    server.start()
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    outbox = Outbox(client)
    outbox.start()
    try:
        request_id = uuid.uuid4().hex
        outbox.put(replies.event_fields(request_id, {"type": "started"}))
        assert outbox.flush(10) and outbox.error is None
        server.stop()
        outbox.put(replies.event_fields(request_id, {"type": "delta", "text": "lost"}))
        assert outbox.flush(10)
        assert isinstance(outbox.error, redis.ConnectionError)
        outbox.put(replies.event_fields(request_id, {"type": "delta", "text": "dropped"}))  # refused while failed
        assert outbox.flush(10)
        outbox.reset()
        assert outbox.error is None
        server = EmbeddedRedis(port=server.port)
        server.start()
        outbox.put(replies.event_fields(request_id, {"type": "done"}))
        assert outbox.flush(10) and outbox.error is None
        events = [decode_event(fields)["type"] for _, fields in client.xrange(keys.response_stream(request_id))]
        assert events == ["done"]  # the restarted Redis is empty; nothing queued while failed came back
    finally:
        outbox.close()
        server.stop()
