"""Which of a step's events a worker hands straight to a gateway on its own host, and when their stream
entries are written (the outbox writes them).

`route` takes a step's commands (as `queue/replies.py` builds them) and sends, per gateway, one datagram of
the events it may hand over (`queue/local_feed.py`); their entries are written unpublished. A step whose
commands are all handed-over text deltas writes nothing at once: their entries wait (`DEFER_S` at most,
`DEFER_MAX` commands) and go first in the next write. Redis still gets every entry, in order, and is woken
a few times a second rather than once a token. Anything else (a `started`, a `done`, an ack, an event
that could not be handed over) is written at once, behind what waited.

A request's first and last events go through Redis, published, as before: its `started` (below), and its
`done` or error, which leaves in one transaction with its ack and after every entry of the request. When
the gateway hears of the end, the request is off its model's stream (the next request of a full queue is
not refused for it) and its response stream is whole (deleting it then leaves nothing to be written
back into it).

A request's events are handed over only once Redis has answered the write of its `started` (which goes
through Redis, published, as before). A connection to Redis that broke while the worker was idle (a
restart) is found only when an answer fails to come; until then nothing of a request reaches its gateway
but through Redis, so a request lost that way is redelivered before any of its text went out, as it always
was; and one whose attempt was overtaken (its `started` fenced off) hands over nothing. `confirm` is the
outbox telling which `started` Redis wrote.
"""

from __future__ import annotations

import time

from server.queue import replies
from server.queue.local_feed import LocalSender
from server.queue.replies import Command

DEFER_S = 0.1  # a handed-over delta's stream entry is written at most this late
DEFER_MAX = 256  # or once this many wait
FINAL = ("done", "error")


class Handovers:
    def __init__(self, sender: LocalSender, defer_s: float = DEFER_S) -> None:
        self._sender = sender
        self._defer_s = defer_s
        self._confirmed: set[str] = set()  # response streams whose `started` Redis took
        self._waiting: list[Command] = []  # handed-over deltas' entries, not written yet
        self._waiting_since = 0.0

    def route(self, commands: list[Command]) -> tuple[list[Command], list[tuple[int, str]]]:
        """What to write now (entries that waited first) and, for each `started` in it, its place in the
        write and its response stream; ([], []) when every command is a handed-over delta whose entry may
        wait."""
        handovers = [replies.handover(words) for words in commands]
        eligible = [h if h is not None and h.kind not in FINAL and h.stream in self._confirmed else None
                    for h in handovers]
        frames: dict[str, list[bytes]] = {}
        for handover in eligible:
            if handover is not None:
                frames.setdefault(handover.feed, []).append(handover.frame)
        sent = {feed for feed, events in frames.items() if self._sender.send(feed, events)}
        out: list[Command] = []
        deltas_only = True
        for words, handover, handed in zip(commands, handovers, eligible, strict=True):
            if handed is not None and handed.feed in sent:
                out.append(handed.unpublished)
                deltas_only = deltas_only and handed.kind == "delta"
            else:
                out.append(words)
                deltas_only = False
                if handover is not None and handover.kind in FINAL:
                    self._confirmed.discard(handover.stream)  # the request ends: nothing more to hand over
        if deltas_only:
            if not self._waiting:
                self._waiting_since = time.monotonic()
            self._waiting += out
            if not self.due():
                return [], []
            out = []
        waiting = self.take_waiting()
        started = [(len(waiting) + i, h.stream) for i, h in enumerate(handovers)
                   if h is not None and h.kind == "started"]
        return waiting + out, started

    def confirm(self, stream: str) -> None:
        """Redis wrote this request's `started` (its fence let it): its events may be handed over."""
        self._confirmed.add(stream)

    def due(self) -> bool:
        """Whether entries have waited long enough (or are too many) to be written now."""
        return bool(self._waiting) and (time.monotonic() - self._waiting_since >= self._defer_s
                                        or len(self._waiting) >= DEFER_MAX)

    def take_waiting(self) -> list[Command]:
        waiting, self._waiting = self._waiting, []
        return waiting

    def clear(self) -> None:
        """Forget what waits and what was confirmed (the worker abandoned what it held)."""
        self._waiting.clear()
        self._confirmed.clear()

    def close(self) -> None:
        self._sender.close()
