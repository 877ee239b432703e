"""How the gateway follows one request's response stream: the events its worker writes, in order,
each once, through a Redis that may drop out for a moment.

With the gateway's event feed live (`queue/feed.py`) a request waits on its mailbox and reads its
stream only to catch up: when it starts (unless its mailbox was taken before its job was queued:
`Follower`), when the subscription was made again, and after a silent wait (which also tells a dead
subscription from a quiet worker). Without it (no feed, or the
subscription down) it reads with a blocking `XREAD`. Either way the reads go on a connection the
request holds, from the last entry it took, so nothing is lost or taken twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator
from typing import Any

from server.queue.events import Event, from_wire
from server.queue.feed import Entry, EventFeed, Mailbox, entry_order
from server.queue.messages import EVENT_FIELD, decode_event_value
from server.redis_connect import OUTAGE_ERRORS

READ_BLOCK_MS = 250
READ_COUNT = 256
OUTAGE_GRACE_S = 3.0  # a stream's reads may fail this long in a row before its request gives up
# after a failed read the next one waits: none after the first failure (a connection dropped for a
# moment), then this, doubled per failure up to the cap (a Redis that is away refuses at once: retried
# without a pause, a failover's 2-3 s cost thousands of reads per request)
RETRY_FIRST_S = 0.02
RETRY_MAX_S = 0.25
READ_FAILURES: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, TimeoutError)  # TimeoutError: our read deadline

_FIELD = EVENT_FIELD.encode()
# entry ids below this first part are a worker's numbering (`attempt-n`); above, Redis's clock (milliseconds)
NUMBERED_BELOW = 1 << 32


class StreamReads:
    """`XREAD`s of one response stream, from the last entry taken, on a connection held between reads."""

    def __init__(self, pool: Any, stream: str, read_timeout_s: float) -> None:
        self.pool = pool
        self.stream = stream
        self.read_timeout_s = read_timeout_s
        self.last: bytes = b"0-0"
        self._last_order = (0, 0)
        self._held: list[Entry] = []  # pushed entries waiting for one before them (`take_pushed`)
        self._conn: Any = None

    async def read(self, block_ms: int | None) -> list[Entry]:
        """The entries after the last one taken (waiting up to `block_ms` for one; None: not at all).
        A failed read drops the connection (whatever it held is unread or lost: never reused) and raises."""
        words: tuple[Any, ...] = ("XREAD", "COUNT", READ_COUNT)
        if block_ms is not None:
            words += ("BLOCK", block_ms)
        try:
            if self._conn is None:
                self._conn = await self.pool.get_connection()
            conn = self._conn
            await conn.send_packed_command(conn.pack_command(*words, "STREAMS", self.stream, self.last),
                                           check_health=False)
            # redis-py's own read timeout answers None on expiry, as a read that found nothing does,
            # leaving the late reply to be taken for the next read's: this one cuts the read short,
            # which drops the connection
            async with asyncio.timeout(self.read_timeout_s):
                reply: Any = await conn.read_response(disable_decoding=True, timeout=math.inf)
        except READ_FAILURES:
            await self.close(drop=True)
            raise
        if not reply:
            return []
        found: list[Entry] = []
        for entries in (reply.values() if isinstance(reply, dict) else (e for _name, e in reply)):
            for entry_id, fields in entries:
                found.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=True))[_FIELD]))
        return self.take(found)

    def take(self, entries: list[Entry]) -> list[Entry]:
        """Those of `entries` (read from the stream: the record, in order) after the last one taken (the
        feed and a read may both bring one), and then what was held that follows them."""
        fresh: list[Entry] = []
        for entry in entries:
            order = entry_order(entry[0])
            if order > self._last_order:
                self._last_order = order
                self.last = entry[0]
                fresh.append(entry)
        return fresh + self.take_pushed([]) if self._held else fresh

    def take_pushed(self, entries: list[Entry]) -> list[Entry]:
        """Those of `entries` (pushed: by the feed or a worker's local hand-off, each in order, the two
        interleaved) that come next, in order. A numbered entry (`attempt-n`, `replies.event`) is taken
        only right after its predecessor (n - 1 of its attempt, or anything of an earlier one when n is 1);
        one that arrived first is held until it comes, or until a read of the stream passes them both."""
        pending = sorted(self._held + entries, key=lambda entry: entry_order(entry[0])) if self._held else entries
        self._held = []
        fresh: list[Entry] = []
        for entry in pending:
            order = entry_order(entry[0])
            if order <= self._last_order:
                continue
            if order[0] < NUMBERED_BELOW and not self._next(order):
                self._held.append(entry)
                continue
            self._last_order = order
            self.last = entry[0]
            fresh.append(entry)
        return fresh

    @property
    def holding(self) -> bool:
        """Whether pushed entries wait for one before them."""
        return bool(self._held)

    def _next(self, order: tuple[int, int]) -> bool:
        attempt, number = order
        last_attempt, last_number = self._last_order
        return number == last_number + 1 if attempt == last_attempt else number == 1

    async def close(self, *, drop: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if drop:
                await conn.disconnect()
            await self.pool.release(conn)


def decode(entries: list[Entry]) -> list[Event]:
    return [from_wire(decode_event_value(value)) for _entry_id, value in entries]


class Follower:
    """A request's events followed from before its job is queued: its mailbox is taken now, so while the
    subscription it was taken under lasts, nothing can be published for it unseen and no first read
    of its stream is needed (with `queued`, for a job already queued, it is). `close` (also when the
    job was never queued) gives the mailbox back."""

    def __init__(self, reads: StreamReads, feed: EventFeed | None, *, queued: bool = False) -> None:
        self.reads = reads
        self.feed = feed
        box = feed.follow(reads.stream) if feed is not None else None
        # `queued`: the job may have events already, read the stream first
        caught_up = feed.generation if feed is not None and feed.live and not queued else -1
        self.batches = event_batches(reads, feed, box, caught_up)

    async def close(self) -> None:
        await self.batches.aclose()  # a generator never started runs no `finally`: done here too
        if self.feed is not None:
            self.feed.unfollow(self.reads.stream)
        await self.reads.close()


async def event_batches(reads: StreamReads, feed: EventFeed | None, box: Mailbox | None,
                        caught_up: int) -> AsyncGenerator[list[Event] | None, None]:
    """Yield the request's events as they come, what each read returned together; `None` after
    each silent wait (a tick). A read that fails for want of Redis is a silent one too, for up to
    `OUTAGE_GRACE_S` in a row (a link that drops for a moment, a failover under way: reading on from
    the last entry, on a fresh connection, loses and repeats nothing), retried at once the first
    time and after a growing pause (`RETRY_FIRST_S` to `RETRY_MAX_S`) from then on, each pause after
    its tick; a longer outage raises.
    `box`: its mailbox on `feed` (a `Follower`'s); `caught_up`: the subscription under which nothing of
    the stream is unread (-1: none, read it first)."""
    failing_since: float | None = None
    pause_s = 0.0  # before the next read: grows while reads fail
    try:
        while True:
            silent = False
            if box is not None and feed is not None and feed.live and caught_up == feed.generation:
                arrived = await box.take(READ_BLOCK_MS / 1000)
                if arrived:
                    fresh = reads.take_pushed(arrived)
                    if fresh:
                        yield decode(fresh)
                    if not reads.holding:
                        continue
                    # one came before an earlier one: that went by Redis (written before it was published),
                    # so the stream has it now
                silent = arrived is None  # else woken with nothing (the subscription changed) or holding
            generation = feed.generation if feed is not None and feed.live else None
            try:
                entries = await reads.read(None if generation is not None else READ_BLOCK_MS)
            except READ_FAILURES:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > OUTAGE_GRACE_S:
                    raise
                yield None
                if pause_s:
                    await asyncio.sleep(pause_s)
                pause_s = min(RETRY_MAX_S, max(RETRY_FIRST_S, pause_s * 2))
                continue
            failing_since, pause_s = None, 0.0
            if feed is not None and generation is not None:
                if silent and entries and caught_up == generation:
                    feed.suspect()  # the stream has what the subscription never brought
                if len(entries) < READ_COUNT:
                    caught_up = generation
            if entries:
                yield decode(entries)
            elif generation is None or silent:
                yield None
    finally:
        if feed is not None:
            feed.unfollow(reads.stream)
        await reads.close()
