"""Redis writes of a worker's decode thread, sent without waiting for their answers.

The decode thread never waits on a Redis round trip to hand out tokens: `put` packs a step's
commands into one `MULTI`/`EXEC` (a lone command, as a step at one client has, goes as it is: it is
atomic by itself, and leaves one answer to read rather than three) and writes it to a connection of
the outbox's own, then returns to the next decode step. The answers are read later, without
waiting, at the next `put` or `poll` (they are in the socket by then: a step takes milliseconds, a
round trip a fraction of one). One connection, written in order, keeps the order: a request's final
event and its `XACK` leave after all of its tokens.

No thread of its own: a hand-off to a sending thread cost a wake-up and a GIL switch per step, CPU
that on a small host is taken from llama.cpp's compute threads (benchmarks/RUNS.md, run 12).

Events for a gateway on this host are handed to it directly (`handovers.py`), their stream entries
written here unpublished, a run of text deltas' entries late and in one go.

A failed write or an error answer is kept (`error`) for the decode thread to raise, which abandons
what it holds (the gateway then redelivers or times out those requests); so is an answer that has
not come within the connection's socket timeout (a Redis cut off: the worker stops within that
timeout, as a blocking write would). `reset` drops the connection and what was unanswered on it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import redis
from redis.exceptions import ResponseError

from server.queue.replies import Command
from server.worker.handovers import Handovers

log = logging.getLogger("slm.worker")

DEFAULT_TIMEOUT_S = 5.0


class _Sent:
    """One transaction written, its answers not all read."""

    __slots__ = ("left", "sent_at", "started")

    def __init__(self, left: int, sent_at: float, started: list[tuple[int, str]]) -> None:
        self.left = left  # answers still to read
        self.sent_at = sent_at
        self.started = started  # the `started` it writes: (place among its commands, response stream)


class Outbox:
    def __init__(self, client: redis.Redis, handovers: Handovers | None = None) -> None:
        self._pool = client.connection_pool
        self._timeout_s = float(self._pool.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S)
        self._conn: Any = None  # a pool connection, held while answers are outstanding on it
        self._unanswered: deque[_Sent] = deque()
        self._error: redis.RedisError | None = None
        self._handovers = handovers  # events for gateways on this host; None: all through Redis

    def put(self, commands: list[Command]) -> None:
        """Hand over what goes to a gateway on this host, and write the rest (with entries that waited) as
        one transaction (nothing while a failure is kept)."""
        if not commands or self._error is not None:
            return
        try:
            self._read_ready()  # answers confirm requests' `started`: their events may be handed over now
        except redis.RedisError as exc:
            self._fail(exc)
            return
        if self._handovers is None:
            self._write(commands, [])
        else:
            self._write(*self._handovers.route(commands))

    def _write(self, commands: list[Command], started: list[tuple[int, str]]) -> None:
        """Send `commands` as one transaction (the answers already in are read by the callers first)."""
        if not commands:
            return
        try:
            conn = self._connection()
            sent = commands if len(commands) == 1 else [("MULTI",), *commands, ("EXEC",)]
            conn.send_packed_command(conn.pack_commands(sent), check_health=False)
        except redis.RedisError as exc:
            self._fail(exc)
            return
        self._unanswered.append(_Sent(len(sent), time.monotonic(), started))  # one answer per command sent

    def poll(self) -> None:
        """Write the deferred entries that waited long enough; read the answers already in, without waiting
        (a failure among them is kept in `error`)."""
        if self._handovers is not None and self._error is None and self._handovers.due():
            self._write(self._handovers.take_waiting(), [])
        if self._unanswered and self._error is None:
            try:
                self._read_ready()
            except redis.RedisError as exc:
                self._fail(exc)

    @property
    def error(self) -> redis.RedisError | None:
        return self._error

    def reset(self) -> None:
        """Forget a failure and whatever was unanswered (the connection goes too)."""
        self._drop()
        self._error = None

    def flush(self, timeout_s: float) -> bool:
        """Write what waited, then wait for every answer (or a failure); False if that took longer than
        `timeout_s`."""
        if self._handovers is not None and self._error is None:
            self._write(self._handovers.take_waiting(), [])
        deadline = time.monotonic() + timeout_s
        try:
            while self._unanswered and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if self._conn.can_read(timeout=min(left, self._timeout_s)):
                    self._read_one()
                else:
                    self._read_ready()  # raises once the oldest write has waited past the socket timeout
        except redis.RedisError as exc:
            self._fail(exc)
        return True

    def close(self) -> None:
        self._drop()
        if self._handovers is not None:
            self._handovers.close()

    # -- internals ------------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._pool.get_connection()
        return self._conn

    def _read_ready(self) -> None:
        while self._unanswered:
            if not self._conn.can_read(timeout=0):
                if time.monotonic() - self._unanswered[0].sent_at > self._timeout_s:
                    raise redis.TimeoutError("redis did not answer the worker's writes in time")
                return
            self._read_one()

    def _read_one(self) -> None:
        head = self._unanswered[0]
        answer = self._conn.read_response(disable_decoding=True, timeout=self._timeout_s)
        head.left -= 1
        if head.left <= 0:
            self._unanswered.popleft()
            if isinstance(answer, list):  # EXEC's answers: an error there failed its command alone
                # (a lone command's error answer is raised by `read_response` itself)
                failed = next((a for a in answer if isinstance(a, ResponseError)), None)
                if failed is not None:
                    raise failed
            if head.started and self._handovers is not None:
                answers = answer if isinstance(answer, list) else [answer]
                for place, stream in head.started:
                    if answers[place] == 1:  # written, not fenced off
                        self._handovers.confirm(stream)

    def _fail(self, exc: redis.RedisError) -> None:
        log.warning("sending to redis failed (%s)", type(exc).__name__)
        self._error = exc
        self._drop()

    def _drop(self) -> None:
        self._unanswered.clear()
        if self._handovers is not None:
            self._handovers.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)
