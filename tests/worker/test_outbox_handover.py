"""The outbox handing events to a gateway on this host (`worker/handovers.py`, `queue/local_feed.py`),
against a real Redis and a real Unix datagram socket standing in for the gateway's: a request's events are
handed over once Redis took its `started`, and written to the stream unpublished, a run of text deltas late
and at once, every entry in order under its numbered id; what cannot be handed over is published as
before."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from server.queue import keys, local_feed, replies
from server.queue.events import Done, Event, Started, TextDelta
from server.queue.local_feed import LocalSender
from server.queue.messages import decode_event
from server.worker.handovers import Handovers
from server.worker.outbox import Outbox

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway() -> Iterator[tuple[str, socket.socket]]:
    """A feed channel and the socket a gateway would bind for it (read by the test)."""
    channel = f"slm:feed:test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(local_feed.address(channel))
    yield channel, sock
    sock.close()


def received(sock: socket.socket) -> list[tuple[bytes, bytes, bytes]]:
    """Every event in the socket's queue now."""
    out: list[tuple[bytes, bytes, bytes]] = []
    while True:
        try:
            out += local_feed.frames(sock.recv(1 << 20, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


def commands(rid: str, events: list[Event], first: int, feed: str) -> list[replies.Command]:
    return [words for n, event in enumerate(events, first) for words in replies.event(rid, event, feed, n)]


def confirmed(outbox: Outbox, rid: str, channel: str) -> None:
    """`rid` started, and Redis's answer to that read: its events may be handed over from now on."""
    outbox.put(commands(rid, [Started(1, "w", 3)], 1, channel))
    assert outbox.flush(10)


def publishes(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def test_deltas_handed_over_are_written_later_in_one_go_unpublished(
        client: redis.Redis, gateway: tuple[str, socket.socket]) -> None:
    channel, sock = gateway
    rid = uuid.uuid4().hex
    stream = keys.response_stream(rid)
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=3600))
    try:
        outbox.put(commands(rid, [Started(1, "w", 3)], 1, channel))
        assert outbox.flush(10)  # its answer read: Redis took it
        assert received(sock) == []  # a `started` goes through Redis, published
        assert client.xlen(stream) == 1
        published = publishes(client)
        for n in range(2, 12):
            outbox.put(commands(rid, [TextDelta(1, text=str(n), tokens=1)], n, channel))
        assert [e for _, e, _ in received(sock)] == [f"1-{n}".encode() for n in range(2, 12)]  # each step at once
        outbox.poll()
        assert client.xlen(stream) == 1  # their entries wait
        outbox.put(commands(rid, [Done(1, "stop")], 12, channel) + replies.ack("test:none", "0-1"))
        assert outbox.flush(10) and outbox.error is None
        assert received(sock) == []  # `done` goes through Redis, with the ack, after every entry
    finally:
        outbox.close()
    entries = client.xrange(stream)
    assert [entry_id for entry_id, _ in entries] == [f"1-{n}".encode() for n in range(1, 13)]
    assert [decode_event(fields)["type"] for _, fields in entries] == ["started", *["delta"] * 10, "done"]
    assert publishes(client) == published + 1  # the deltas were not published


def test_waiting_entries_are_written_once_they_are_due(client: redis.Redis, gateway: tuple[str, socket.socket]) -> None:
    channel, sock = gateway
    rid = uuid.uuid4().hex
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=0.0))  # due at once: written with the step
    try:
        confirmed(outbox, rid, channel)
        outbox.put(commands(rid, [TextDelta(1, text="a", tokens=1)], 2, channel))
        assert outbox.flush(10)
    finally:
        outbox.close()
    assert len(received(sock)) == 1
    assert [entry_id for entry_id, _ in client.xrange(keys.response_stream(rid))] == [b"1-1", b"1-2"]


def test_a_flush_writes_what_waits(client: redis.Redis, gateway: tuple[str, socket.socket]) -> None:
    channel, _sock = gateway
    rid = uuid.uuid4().hex
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=3600))
    try:
        confirmed(outbox, rid, channel)
        outbox.put(commands(rid, [TextDelta(1, text="a", tokens=1), TextDelta(1, text="b", tokens=1)], 2, channel))
        assert outbox.flush(10)
    finally:
        outbox.close()
    assert client.xlen(keys.response_stream(rid)) == 3


def test_events_for_a_gateway_elsewhere_are_published(client: redis.Redis) -> None:
    channel = f"slm:feed:elsewhere-{uuid.uuid4().hex}"  # no socket of that name here
    rid = uuid.uuid4().hex
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=3600))
    try:
        outbox.put(commands(rid, [Started(1, "w", 3), TextDelta(1, text="a", tokens=1)], 1, channel))
        outbox.put(commands(rid, [TextDelta(1, text="b", tokens=1)], 3, channel))
        assert outbox.flush(10)
        messages = [pubsub.get_message(timeout=5) for _ in range(3)]
    finally:
        outbox.close()
        pubsub.close()
    assert [m["data"].split(b"\n")[1] for m in messages if m] == [b"1-1", b"1-2", b"1-3"]
    assert client.xlen(keys.response_stream(rid)) == 3


class RecordedSender(LocalSender):
    """A sender whose every answer is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bool] = []

    def send(self, channel: str, events: list[bytes]) -> bool:
        self.answers.append(super().send(channel, events))
        return self.answers[-1]


def test_a_step_for_a_full_gateway_goes_by_redis_behind_what_waited(
        client: redis.Redis, gateway: tuple[str, socket.socket]) -> None:
    """The gateway's queue fills (it is behind): that step is published, after the entries of the deltas handed
    over before it, so the stream has every event before the gateway hears of a later one; once the gateway
    reads again, steps are handed over again."""
    channel, sock = gateway
    rid = uuid.uuid4().hex
    sender = RecordedSender()
    outbox = Outbox(client, Handovers(sender, defer_s=3600))
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    n = 1
    try:
        confirmed(outbox, rid, channel)
        assert pubsub.get_message(timeout=5) is not None  # its `started`
        while not sender.answers or sender.answers[-1]:  # handed over until the unread socket's queue is full
            n += 1
            outbox.put(commands(rid, [TextDelta(1, text=str(n), tokens=1)], n, channel))
            assert n < 100_000
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"].split(b"\n")[1] == f"1-{n}".encode()
        handed = [entry_id for _, entry_id, _ in received(sock)]
        assert handed == [f"1-{i}".encode() for i in range(2, n)]
        outbox.put(commands(rid, [TextDelta(1, text="next", tokens=1)], n + 1, channel))
        assert sender.answers[-1]
        assert outbox.flush(10)
    finally:
        outbox.close()
        pubsub.close()
    entries = client.xrange(keys.response_stream(rid))
    assert [entry_id for entry_id, _ in entries] == [f"1-{i}".encode() for i in range(1, n + 2)]


def test_nothing_of_a_request_is_handed_over_before_redis_took_its_start(gateway: tuple[str, socket.socket]) -> None:
    """A Redis that does not answer (a connection broken while the worker was idle shows only so): the
    request's text is not handed to its gateway, which could then not have it redelivered unseen."""
    channel, sock = gateway
    listener = socket.create_server(("127.0.0.1", 0))  # connections complete in its backlog; never answered
    client = redis.Redis(host="127.0.0.1", port=listener.getsockname()[1], socket_timeout=5,
                         socket_connect_timeout=1, protocol=2, lib_name=None, lib_version=None)
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=3600))
    rid = uuid.uuid4().hex
    try:
        outbox.put(commands(rid, [Started(1, "w", 3)], 1, channel))
        for n in range(2, 6):
            outbox.put(commands(rid, [TextDelta(1, text=str(n), tokens=1)], n, channel))
        assert outbox.error is None
        assert received(sock) == []
    finally:
        outbox.close()
        client.close()
        listener.close()


def test_an_attempt_whose_start_was_fenced_off_hands_nothing_over(
        client: redis.Redis, gateway: tuple[str, socket.socket]) -> None:
    """Another worker's newer attempt holds the request: this one's `started` is turned away by the fence,
    and so are its events, which must not reach the gateway by the side either."""
    channel, sock = gateway
    rid = uuid.uuid4().hex
    client.set(keys.job_running(rid), 2, ex=60)
    outbox = Outbox(client, Handovers(LocalSender(), defer_s=3600))
    try:
        outbox.put(commands(rid, [Started(1, "w", 3)], 1, channel))
        assert outbox.flush(10)  # answered: not written
        outbox.put(commands(rid, [TextDelta(1, text="stale", tokens=1)], 2, channel))
        assert outbox.flush(10) and outbox.error is None
        assert received(sock) == []
        assert client.xlen(keys.response_stream(rid)) == 0
    finally:
        outbox.close()
        client.delete(keys.job_running(rid))
