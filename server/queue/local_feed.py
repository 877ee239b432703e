"""Events handed from a worker straight to a gateway on the same host: one Unix datagram per gateway per
decode step, beside the Redis stream, which stays the record.

Through Redis alone a token woke Redis, then the gateway (the feed's `PUBLISH`), then the client; on a small
host each of those runs on the cores that llama.cpp computes on (benchmarks/RUNS.md, "The step gap at one
client"). Handed over here, it wakes the gateway alone, and the worker writes the stream entries it handed
over unpublished, a run of text deltas in one write (`worker/handovers.py`).

A gateway binds an abstract Unix datagram socket named after its feed channel (`address`). Abstract names
belong to a network namespace: a worker on another host (or in another container's namespace) finds no such
socket, remembers that for `RETRY_S`, and publishes on Redis as before. Any process in the gateway's
namespace can send to it, as any Redis client can publish on the feed: what it sends only reaches a request
whose response stream it names (a request id is 128 random bits).

A datagram holds one step's events for one gateway, each as three lines (`stream`, `entry id`, `value`:
the feed's message; the value is JSON, which has no raw line breaks). Entry ids are explicit
(`attempt-number`, `replies.event`), so an event that arrives twice (here and from the stream) is taken
once, and one that comes by Redis while an earlier one is still in this socket's queue waits for it
(`follow.StreamReads`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

log = logging.getLogger("slm.queue")

RETRY_S = 5.0  # a gateway found unreachable is tried again after this long
MAX_DATAGRAM = 64 * 1024  # a step's events for one gateway above this go through Redis (embeddings)
RECEIVE_BUFFER = 4 * 1024 * 1024


def address(channel: str) -> str:
    """The abstract socket name of the gateway whose feed channel is `channel`."""
    return "\0" + channel


def frames(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """A datagram's events as (stream, entry id, value); a malformed tail is dropped."""
    lines = data.split(b"\n")
    return [(lines[i], lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)]


class LocalSender:
    """A worker's side: one unbound datagram socket, non-blocking (a gateway behind never stalls a step)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._unreachable: dict[str, float] = {}  # channel -> when to try it again (monotonic)

    def send(self, channel: str, events: list[bytes]) -> bool:
        """Hand `events` (each "stream\\nentry id\\nvalue") to the gateway of `channel` in one datagram.
        False when it did not go: no such gateway here, its queue full, or too big; they go by Redis then."""
        retry_at = self._unreachable.get(channel)
        if retry_at is not None:
            if time.monotonic() < retry_at:
                return False
            del self._unreachable[channel]
        data = b"\n".join(events)
        if len(data) > MAX_DATAGRAM:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        try:
            self._sock.sendto(data, address(channel))
        except BlockingIOError:  # the gateway's queue is full: it is behind, this step goes by Redis
            return False
        except OSError:  # no such socket in this namespace: a gateway elsewhere (or gone)
            self._unreachable[channel] = time.monotonic() + RETRY_S
            return False
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


class LocalReceiver:
    """A gateway's side: its abstract socket, read on the event loop; each event goes to `deliver`."""

    def __init__(self, channel: str, deliver: Callable[[bytes, bytes, bytes], None]) -> None:
        self.channel = channel
        self._deliver = deliver
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def start(self) -> bool:
        """Bind and read from now on (on the running loop), unless bound already; False (and nothing bound)
        if that failed."""
        if self._sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(address(self.channel))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError as exc:
            sock.close()
            log.warning("no local event socket (%s): events come through Redis only", exc)
            return False
        sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        self._sock = sock
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _readable(self) -> None:
        """Every datagram queued now (a step of each worker that wrote since the last read)."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            for stream, entry_id, value in frames(data):
                self._deliver(stream, entry_id, value)
