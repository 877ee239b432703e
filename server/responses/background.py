"""Background responses (`background: true`): generated detached from the request that created them.

The gateway that took the request runs it as a task: its status goes into the stored response
(`queued`, `in_progress`, then `completed` / `incomplete` / `failed` / `cancelled`) and every event
into a Redis stream (`EventLog`), so any gateway can show it, stream it, or resume a stream after a
given `sequence_number` (`starting_after`). Cancelling sets a flag in Redis; the running gateway sees
it within `CANCEL_POLL_S` and closes the generation, which cancels the job on its worker (the slot
is freed as when a streaming client leaves).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis

from server.queue import keys
from server.responses.events import TERMINAL

log = logging.getLogger("slm.responses")

CANCEL_POLL_S = 0.1
READ_BLOCK_MS = 250
FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


class BackgroundRuns:
    """The background responses this gateway runs; stopped (their generations cancelled) at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class EventLog:
    """A background response's events in a Redis stream, and its cancel flag."""

    def __init__(self, commands: aioredis.Redis, reader: aioredis.Redis, ttl_s: int) -> None:
        self.commands = commands
        self.reader = reader
        self.ttl_s = ttl_s

    async def append(self, owner: str, response_id: str, events: list[dict[str, Any]]) -> None:
        key = keys.response_events(owner, response_id)
        async with self.commands.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(key, {"e": json.dumps(event, separators=(",", ":"), ensure_ascii=False)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def cancel(self, response_id: str) -> None:
        await self.commands.set(keys.response_cancel(response_id), "1", ex=self.ttl_s)

    def cancelled(self, response_id: str) -> Callable[[], Coroutine[Any, Any, bool]]:
        """A check of the cancel flag, at most every `CANCEL_POLL_S` (answers the last result between)."""
        state = {"at": 0.0, "value": False}

        async def check() -> bool:
            now = time.monotonic()
            if not state["value"] and now - float(state["at"]) >= CANCEL_POLL_S:
                state["at"] = now
                state["value"] = bool(await self.commands.exists(keys.response_cancel(response_id)))
            return bool(state["value"])

        return check

    async def follow(self, owner: str, response_id: str, starting_after: int,
                     finished: Callable[[], Awaitable[bool]]) -> AsyncGenerator[list[dict[str, Any]]]:
        """The events after `starting_after`, as they come, until the terminal one (or, when the run
        stopped without one (cancelled, its gateway gone), until `finished()` and nothing is left)."""
        key = keys.response_events(owner, response_id)
        last = "0-0"
        ending = False  # finished: one more read takes what was written before it finished
        while True:
            read: Any = await self.reader.xread({key: last}, count=256, block=READ_BLOCK_MS)
            batch = []
            for _stream, entries in read or []:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    event = json.loads(fields[b"e"])
                    if event["sequence_number"] > starting_after:
                        batch.append(event)
            if batch:
                yield batch
                if batch[-1]["type"] in TERMINAL:
                    return
            elif ending:
                return
            else:
                ending = await finished()
