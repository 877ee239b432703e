"""The gateway side of the queue: admit a job, then follow its event stream.

Admission is one Lua script (atomic: backlog check + `XADD`), so a full queue answers 429 having
enqueued nothing; the same script picks the stream (the model's shared one, or the own stream of the
worker holding the job's prompt prefix: `queue/affinity.py`). Events are read with `XREAD BLOCK` from
`0-0` on a connection pool of its own, so a reply that arrives before we start reading is never lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError

from server.errors import OverloadedError, ServiceUnavailableError
from server.queue import affinity, keys
from server.queue.events import Event, from_wire
from server.queue.messages import Job, decode_event

READ_BLOCK_MS = 250
RETRY_AFTER_S = 1.0


class QueueClient:
    def __init__(self, url: str, *, timeout_s: float = 1.0, max_connections: int = 1024, cache_aware: bool = True,
                 heartbeat_ttl_s: float = 5.0) -> None:
        self.cache_aware = cache_aware  # SLM_CACHE_AWARE_DISPATCH: follow-up turns to the worker holding their prefix
        self.heartbeat_ttl_s = heartbeat_ttl_s
        # one quick retry on a fresh connection: pooled connections die with a Redis restart
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1)
        errors: list[type[Exception]] = [ConnectionError, TimeoutError]
        self.commands: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=5,
            retry=retry, retry_on_error=errors,
        )
        self.reader: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s + READ_BLOCK_MS / 1000,
            socket_connect_timeout=timeout_s,
            max_connections=max_connections,
            retry=retry,
            retry_on_error=errors,
        )
        self._admit = self.commands.register_script(affinity.ADMIT)
        self._groups: set[str] = set()

    async def close(self) -> None:
        await self.commands.aclose()
        await self.reader.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.commands.ping())
        except (RedisError, OSError):
            return False

    async def ensure_group(self, model: str) -> None:
        stream = keys.request_stream(model)
        if stream in self._groups:
            return
        try:
            await self.commands.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(stream)

    async def live_workers(self, models: list[str], ttl_s: float) -> dict[str, int]:
        now = time.time()
        pipe = self.commands.pipeline(transaction=False)
        for model in models:
            pipe.zcount(keys.worker_heartbeats(model), now - ttl_s, "+inf")
        counts = await pipe.execute()
        return {m: int(c) for m, c in zip(models, counts, strict=True)}

    async def worker_alive(self, model: str, worker_id: str, ttl_s: float) -> bool:
        """Whether that worker beat its heartbeat within `ttl_s`."""
        score = await self.commands.zscore(keys.worker_heartbeats(model), worker_id)
        return score is not None and float(score) >= time.time() - ttl_s

    async def queue_depths(self, models: list[str]) -> dict[str, int]:
        """Queued + running per model: its shared stream and its workers' own streams."""
        pipe = self.commands.pipeline(transaction=False)
        for model in models:
            pipe.eval(affinity.DEPTH, 2, keys.request_stream(model), keys.dispatch_workers(model),
                      keys.worker_stream(model, ""))
        return {m: int(n) for m, n in zip(models, await pipe.execute(), strict=True)}

    async def submit(self, job: Job, *, max_queue: int) -> str:
        """Queue the job; returns the stream it went to (the shared one, or a worker's own)."""
        model = job.model
        found = affinity.fingerprints(job) if self.cache_aware else []
        prefixes = [p.digest for p in found[-affinity.MATCHED_PER_JOB:]]
        try:
            await self.ensure_group(model)
            fields = job.encode()
            ((field, payload),) = fields.items()
            entry = await self._admit(
                keys=[keys.request_stream(model), keys.dispatch_workers(model), keys.worker_heartbeats(model)],
                args=[max_queue, field, payload, keys.worker_stream(model, ""), keys.worker_info(""),
                      keys.worker_prefixes(""), self.heartbeat_ttl_s, keys.GROUP, *prefixes])
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError(
                "The queue is unavailable; try again shortly.", retry_after=RETRY_AFTER_S, code="queue_unavailable"
            ) from exc
        if entry is None:
            raise OverloadedError(
                f"The model '{job.model}' has {max_queue} requests waiting; try again shortly.",
                retry_after=RETRY_AFTER_S,
            )
        stream = entry[0]
        return stream.decode() if isinstance(stream, bytes) else str(stream)

    async def event_batches(self, request_id: str) -> AsyncGenerator[list[Event] | None, None]:
        """Yield the request's events as they come, what each read returned together; `None` after
        each silent read (a tick)."""
        stream = keys.response_stream(request_id)
        last = "0-0"
        while True:
            reply: Any = await self.reader.xread({stream: last}, count=256, block=READ_BLOCK_MS)
            if not reply:
                yield None
                continue
            batch: list[Event] = []
            for _name, entries in reply:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    batch.append(from_wire(decode_event(fields)))
            yield batch

    async def cancel(self, request_id: str) -> None:
        await self.commands.set(keys.cancel_flag(request_id), 1, ex=600)

    async def forget(self, request_id: str) -> None:
        await self.commands.delete(keys.response_stream(request_id))
