"""Redis writes of a worker's decode thread, sent in order by a thread of their own.

The decode thread never waits on a Redis round trip to hand out tokens: it queues the commands
(`put`) and goes on to the next decode step while this thread sends them (llama.cpp releases the
GIL while it computes, so the two overlap). Commands queued while a pipeline is in flight go out
together in the next one, so a busy worker makes fewer, larger round trips. Order is kept: a
request's final event and its `XACK` leave after all of its tokens.

A failed write is kept (`error`) for the decode thread to raise, which abandons what it holds
(the gateway then redelivers or times out those requests); `reset` drops what was still queued.
"""

from __future__ import annotations

import logging
import threading

import redis

from server.queue.replies import Command, send

log = logging.getLogger("slm.worker")


class Outbox:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pending: list[Command] = []
        self._cond = threading.Condition()
        self._in_flight = False
        self._closed = False
        self._error: redis.RedisError | None = None
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, commands: list[Command]) -> None:
        if not commands:
            return
        with self._cond:
            if self._error is None:
                self._pending.extend(commands)
                self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing queued, nothing being sent, no failure: a write made now elsewhere keeps the order."""
        with self._cond:
            return not self._pending and not self._in_flight and self._error is None

    @property
    def error(self) -> redis.RedisError | None:
        return self._error

    def reset(self) -> None:
        """Forget a failure and whatever was queued behind it."""
        with self._cond:
            self._pending.clear()
            self._error = None

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued was sent (or failed); False if that took longer than `timeout_s`."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._in_flight, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._closed)
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                self._in_flight = True
            failure: redis.RedisError | None = None
            try:
                send(self._client, batch)
            except redis.RedisError as exc:
                failure = exc
                log.warning("sending to redis failed (%s)", type(exc).__name__)
            with self._cond:
                if failure is not None:
                    self._error = failure
                    self._pending.clear()
                self._in_flight = False
                self._cond.notify_all()
