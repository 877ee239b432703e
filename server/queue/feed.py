"""A gateway's event feed: one Pub/Sub subscription that hands each request the events its worker
writes, so that a streaming request costs no Redis read per token.

Without it every request holds a blocking `XREAD` of its response stream and sends the next one after
each answer: per token, a write that wakes Redis and a wake-up for its reply, per request. With it the
worker's event script publishes each event it appends (`replies.py`) on the channel its job names
(`Job.feed`, this gateway's); one connection, subscribed for the gateway's life, reads them all and
puts each into the mailbox of the request that waits for it. At eight clients a decode step's eight
tokens reach the gateway in one read.

Pub/Sub delivers only to a live subscription, so the response stream stays the record: a request
catches up from it with a plain `XREAD` when it starts following (before which its events were only
in the stream), whenever the subscription was lost and made again (`generation` changes), and after
each silent wait (`follow.event_batches`). Entries are ordered by id, so whatever arrives both ways
is taken once. While the subscription is down, requests fall back to blocking reads of their streams.

Workers on the gateway's own host hand events over without Redis (`local_feed.py`): the feed binds its
local socket with its first mailbox, and what arrives there goes into the same mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.queue.local_feed import LocalReceiver

log = logging.getLogger("slm.queue")

RETRY_MIN_S = 0.05
RETRY_MAX_S = 1.0
RESTART_GAP_S = 1.0  # a subscription suspected dead is made again at most this often

Entry = tuple[bytes, bytes]  # an event's stream entry id and its wire value


def entry_order(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id (`ms-seq`) as something that sorts as Redis orders ids."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Mailbox:
    """What the feed has for one request, taken in order by `take`."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Entry] = []
        self._waiter: asyncio.Future[bool] | None = None  # True: woken; False: the wait ran out

    def put(self, entry: Entry) -> None:
        self._items.append(entry)
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def take(self, timeout_s: float) -> list[Entry] | None:
        """What arrived, waiting up to `timeout_s` for something or for a `wake` ([]: woken with nothing);
        None if the wait ran out. (A plain timer rather than `asyncio.timeout`: this wait is per token.)"""
        if not self._items:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout_s, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not waiter.result() and not self._items:
                return None
        items, self._items = self._items, []
        return items


class EventFeed:
    """One subscription to `channel`, started when a request first follows it; `close` ends it."""

    def __init__(self, client: aioredis.Redis, channel: str, *, local: bool = True) -> None:
        self.channel = channel
        # `local`: events from workers on this host come straight to a socket of ours as well
        self._local = LocalReceiver(channel, self._hand) if local else None
        self._client = client  # its own (RESP2): `close` closes it
        self._pool: Any = client.connection_pool
        self._boxes: dict[bytes, Mailbox] = {}  # by response stream key, as the feed names it
        self._task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self.generation = 0  # counts subscriptions made: a request caught up under an older one reads again
        self._restarted_at = -math.inf

    @property
    def live(self) -> bool:
        return self._live.is_set()

    def follow(self, stream: str) -> Mailbox:
        """A mailbox for the events of response stream `stream`, from now on."""
        if self._task is None or self._task.done():
            self._start()
            if self._local is not None and not self._local.start():
                self._local = None
        box = Mailbox()
        self._boxes[stream.encode()] = box
        return box

    def unfollow(self, stream: str) -> None:
        self._boxes.pop(stream.encode(), None)

    @property
    def following(self) -> int:
        """How many response streams have a mailbox now."""
        return len(self._boxes)

    def suspect(self) -> None:
        """A request found in its stream what the feed never handed it: the subscription may be dead
        without its connection knowing (a cut link sends no reset). Make it again, at most once a second."""
        loop = asyncio.get_running_loop()
        if self._task is None or loop.time() - self._restarted_at < RESTART_GAP_S:
            return
        self._restarted_at = loop.time()
        log.warning("the event feed missed an event; subscribing again")
        self._task.cancel()  # its connection is dropped on the way out
        self._start()

    async def close(self) -> None:
        if self._local is not None:
            self._local.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    # -- internals ------------------------------------------------------------------------------
    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="slm-event-feed")

    async def _run(self) -> None:
        wait_s = RETRY_MIN_S
        while True:
            conn: Any = None
            generation = -1
            try:
                conn = await self._pool.get_connection()
                generation = await self._subscribe(conn)
                wait_s = RETRY_MIN_S
                await self._deliver(conn)
            except (RedisError, OSError) as exc:
                if generation >= 0:
                    log.warning("the event feed lost its subscription (%s)", type(exc).__name__)
            finally:
                if generation == self.generation:  # not already replaced by a newer subscription
                    self._lost()
                if conn is not None:
                    await conn.disconnect()
                    await self._pool.release(conn)
            await asyncio.sleep(wait_s)
            wait_s = min(RETRY_MAX_S, wait_s * 2)

    async def _subscribe(self, conn: Any) -> int:
        await conn.send_packed_command(conn.pack_command("SUBSCRIBE", self.channel), check_health=False)
        reply: Any = await conn.read_response(disable_decoding=True, timeout=math.inf)
        if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
            raise ConnectionError(f"unexpected answer to SUBSCRIBE: {reply!r}")
        self.generation += 1
        self._live.set()
        self._wake_all()  # each catches up from its stream under the new subscription
        return self.generation

    async def _deliver(self, conn: Any) -> None:
        hand = self._hand
        while True:
            message: Any = await conn.read_response(disable_decoding=True, timeout=math.inf)
            if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
                continue
            parts = message[2].split(b"\n", 2)
            if len(parts) == 3:  # else not ours: another publisher's
                hand(parts[0], parts[1], parts[2])

    def _hand(self, stream: bytes, entry_id: bytes, value: bytes) -> None:
        """An event for the request following `stream`, if one is (published, or handed over locally)."""
        box = self._boxes.get(stream)
        if box is not None:
            box.put((entry_id, value))

    def _lost(self) -> None:
        self._live.clear()
        self._wake_all()  # each falls back to reading its stream

    def _wake_all(self) -> None:
        for box in list(self._boxes.values()):
            box.wake()
