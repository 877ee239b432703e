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

log = logging.getLogger("slm.worker")

DEFAULT_TIMEOUT_S = 5.0


class Outbox:
    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._timeout_s = float(self._pool.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S)
        self._conn: Any = None  # a pool connection, held while answers are outstanding on it
        self._unanswered: deque[list[float]] = deque()  # per transaction: [answers left, sent at]
        self._error: redis.RedisError | None = None

    def put(self, commands: list[Command]) -> None:
        """Write `commands` as one transaction (nothing while a failure is kept)."""
        if not commands or self._error is not None:
            return
        try:
            self._read_ready()
            conn = self._connection()
            sent = commands if len(commands) == 1 else [("MULTI",), *commands, ("EXEC",)]
            conn.send_packed_command(conn.pack_commands(sent), check_health=False)
        except redis.RedisError as exc:
            self._fail(exc)
            return
        self._unanswered.append([float(len(sent)), time.monotonic()])  # one answer per command sent

    def poll(self) -> None:
        """Read the answers already in, without waiting (a failure among them is kept in `error`)."""
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
        """Wait for every answer (or a failure); False if that took longer than `timeout_s`."""
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

    # -- internals ------------------------------------------------------------------------------
    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self._pool.get_connection()
        return self._conn

    def _read_ready(self) -> None:
        while self._unanswered:
            if not self._conn.can_read(timeout=0):
                if time.monotonic() - self._unanswered[0][1] > self._timeout_s:
                    raise redis.TimeoutError("redis did not answer the worker's writes in time")
                return
            self._read_one()

    def _read_one(self) -> None:
        head = self._unanswered[0]
        answer = self._conn.read_response(disable_decoding=True, timeout=self._timeout_s)
        head[0] -= 1
        if head[0] <= 0:
            self._unanswered.popleft()
            if isinstance(answer, list):  # EXEC's answers: an error there failed its command alone
                # (a lone command's error answer is raised by `read_response` itself)
                failed = next((a for a in answer if isinstance(a, ResponseError)), None)
                if failed is not None:
                    raise failed

    def _fail(self, exc: redis.RedisError) -> None:
        log.warning("sending to redis failed (%s)", type(exc).__name__)
        self._error = exc
        self._drop()

    def _drop(self) -> None:
        self._unanswered.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)
