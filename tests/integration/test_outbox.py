"""The worker's outbox against a real Redis: writes leave in the order they were put, none waits for its
answer, and a failure (a lost connection, an error answer, an answer that never comes) is kept for the
decode thread."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

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


def test_an_error_answer_is_kept_and_nothing_is_written_until_reset(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(client)
    key = f"test:outbox:{uuid.uuid4().hex}"
    try:
        outbox.put([("SET", key, "not a stream")])
        outbox.put([("XACK", key, keys.GROUP, "0-1")])  # WRONGTYPE, a lone command's answer
        assert outbox.flush(10)
        assert isinstance(outbox.error, redis.ResponseError)
        assert "WRONGTYPE" in str(outbox.error)
        outbox.put([("SET", key, "dropped")])  # refused while failed
        assert client.get(key) == b"not a stream"
        outbox.reset()
        outbox.put([("SET", key, "written")])
        assert outbox.flush(10) and outbox.error is None
        assert client.get(key) == b"written"
    finally:
        outbox.close()
        client.delete(key)


def test_an_error_inside_a_transaction_is_kept_and_the_rest_of_it_written(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(client)
    key, other = f"test:outbox:{uuid.uuid4().hex}", f"test:outbox:{uuid.uuid4().hex}"
    try:
        outbox.put([("SET", key, "not a stream"), ("XACK", key, keys.GROUP, "0-1"), ("SET", other, "after")])
        assert outbox.flush(10)
        assert isinstance(outbox.error, redis.ResponseError) and "WRONGTYPE" in str(outbox.error)
        assert client.get(other) == b"after"  # EXEC ran the rest: an error fails its own command only
    finally:
        outbox.close()
        client.delete(key, other)


def test_a_lone_command_and_transactions_keep_their_order(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    outbox = Outbox(client)
    key = f"test:outbox:{uuid.uuid4().hex}"
    try:
        for i in range(50):
            batch = [("RPUSH", key, f"{i}.{j}") for j in range(i % 3 + 1)]  # one, two or three commands
            outbox.put(batch)
        assert outbox.flush(10) and outbox.error is None
        expected = [f"{i}.{j}" for i in range(50) for j in range(i % 3 + 1)]
        assert [v.decode() for v in client.lrange(key, 0, -1)] == expected
    finally:
        outbox.close()
        client.delete(key)


def test_a_failed_write_is_kept_until_reset_and_drops_what_follows() -> None:
    server = EmbeddedRedis()
    server.start()
    client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
    outbox = Outbox(client)
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


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A listener that accepts connections and reads what they send, never answering (a Redis cut off
    after the write left: the worker must not wait longer than its socket timeout)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_an_answer_that_never_comes_fails_after_the_socket_timeout(silent_server: int) -> None:
    # no handshake on connect (RESP2, no CLIENT SETINFO): the only unanswered write is the outbox's
    client = redis.Redis(host="127.0.0.1", port=silent_server, socket_timeout=0.5, socket_connect_timeout=1,
                         protocol=2, lib_name=None, lib_version=None)
    outbox = Outbox(client)
    try:
        outbox.put(replies.event_fields(uuid.uuid4().hex, {"type": "started"}))  # returns unanswered
        outbox.poll()
        assert outbox.error is None  # not answered yet, not late yet
        assert outbox.flush(10)  # returns on the failure, well before its own 10 s
        assert isinstance(outbox.error, redis.TimeoutError)
    finally:
        outbox.close()
