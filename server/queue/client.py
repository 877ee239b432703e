"""The gateway side of the queue: admit a job, then follow its event stream.

Admission is one Lua script (atomic: backlog check + `XADD`), so a full queue answers 429 having
enqueued nothing; the same script picks the stream (the model's shared one, or the own stream of the
worker holding the job's prompt prefix: `queue/affinity.py`). Its events come through the gateway's
event feed and its response stream (`queue/follow.py`, `queue/feed.py`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError, ResponseError

from server.errors import OverloadedError, ServiceUnavailableError
from server.queue import affinity, fair, keys
from server.queue.feed import EventFeed
from server.queue.follow import READ_BLOCK_MS, Follower, StreamReads
from server.queue.messages import Job
from server.redis_connect import OUTAGE_ERRORS, RedisTarget
from server.residency.state import Budget, Residency, decode_all

ADMITTED_TTL_S = 600  # how long a job's admitted mark makes a retried admission a no-op



@dataclass(frozen=True)
class Fairness:
    """How the fair queue admits one job: its API key's id, weight and share of `max_queue`, and the
    model's measured drain (jobs a second) for a refusal's `Retry-After`."""

    key: str
    weight: float = 1.0
    share: float = 1.0
    drain_per_s: float = 0.0
RETRY_AFTER_S = 1.0
WANTED_TTL_S = 10


class QueueClient:
    def __init__(self, redis: str | RedisTarget, *, timeout_s: float = 1.0, max_connections: int = 1024,
                 cache_aware: bool = True, heartbeat_ttl_s: float = 5.0, feed: bool = True,
                 local_events: bool = True) -> None:
        target = RedisTarget(url=redis) if isinstance(redis, str) else redis
        self.cache_aware = cache_aware  # SLM_CACHE_AWARE_DISPATCH: follow-up turns to the worker holding their prefix
        self.heartbeat_ttl_s = heartbeat_ttl_s
        # one quick retry on a fresh connection: pooled connections die with a Redis restart or failover
        # (with sentinels the fresh connection asks them where the master is now)
        retry = Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1)
        errors: list[type[Exception]] = list(OUTAGE_ERRORS)
        # as many connections as the reader: redis-py's default pool (100) refused a burst of admissions
        self.commands: aioredis.Redis = target.async_client(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=5,
            retry=retry, retry_on_error=errors, max_connections=max_connections,
        )
        self.reader: aioredis.Redis = target.async_client(
            socket_timeout=timeout_s + READ_BLOCK_MS / 1000,
            socket_connect_timeout=timeout_s,
            max_connections=max_connections,
            retry=retry,
            retry_on_error=errors,
        )
        # a request's own reads of its response stream: one connection held for the whole request, each
        # read sent and answered on it directly (no per-read pool checkout, retry wrapper, send timeout
        # task or reply reshaping: the gateway does this once per token); the read's own timeout bounds it
        self.followers: aioredis.Redis = target.async_client(
            socket_timeout=None, socket_connect_timeout=timeout_s, max_connections=max_connections)
        self._read_timeout_s = timeout_s + READ_BLOCK_MS / 1000
        # one subscription for the whole gateway, on which workers publish its requests' events; RESP2,
        # where a published message is a plain reply (RESP3 would route each through redis-py's push handler)
        self.feed = EventFeed(target.async_client(socket_timeout=None, socket_connect_timeout=timeout_s,
                                                  max_connections=4, protocol=2),
                              keys.event_feed(uuid.uuid4().hex), local=local_events) if feed else None
        self._admit = self.commands.register_script(affinity.ADMIT)
        self._position = self.commands.register_script(fair.POSITION)
        self._groups: set[str] = set()

    @property
    def feed_channel(self) -> str | None:
        """What a job names as its `feed`: where its worker publishes its events for this gateway."""
        return None if self.feed is None else self.feed.channel

    async def close(self) -> None:
        if self.feed is not None:
            await self.feed.close()
        await self.commands.aclose()
        await self.reader.aclose()
        await self.followers.aclose()

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

    async def held(self, request_id: str) -> bool:
        """Whether a worker's running mark for the request is there (set at admission, kept for the
        request's life): gone, no worker holds it, as after a failover that lost it, or an outage in
        which its worker dropped it."""
        return bool(await self.commands.exists(keys.job_running(request_id)))

    async def queue_depths(self, models: list[str]) -> dict[str, int]:
        """Queued + running per model: its shared stream and its workers' own streams."""
        pipe = self.commands.pipeline(transaction=False)
        for model in models:
            pipe.eval(affinity.DEPTH, 2, keys.request_stream(model), keys.dispatch_workers(model),
                      keys.worker_stream(model, ""))
        return {m: int(n) for m, n in zip(models, await pipe.execute(), strict=True)}

    async def residency(self) -> tuple[dict[str, Residency], Budget | None]:
        """The residency the supervisor of `serve` publishes (empty without one)."""
        return decode_all(await self.commands.hgetall(keys.residency()))

    async def want(self, models: list[str], ttl_s: int = WANTED_TTL_S) -> None:
        """Ask the supervisor to load these (unloaded) models."""
        pipe = self.commands.pipeline(transaction=False)
        for model in models:
            pipe.set(keys.residency_wanted(model), 1, ex=ttl_s)
        await pipe.execute()

    async def fair_depths(self, models: list[str]) -> dict[str, tuple[dict[str, int], int]]:
        """Per model: its waiting jobs per priority class, and how many jobs were ever taken (the drain)."""
        pipe = self.commands.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(keys.fair_queue(model) + "depth")
            pipe.get(keys.fair_queue(model) + "taken")
        replies = await pipe.execute()
        out: dict[str, tuple[dict[str, int], int]] = {}
        for i, model in enumerate(models):
            depth: dict[Any, Any] = replies[2 * i]
            out[model] = ({_text(k): int(v) for k, v in depth.items() if int(v) > 0}, int(replies[2 * i + 1] or 0))
        return out

    async def position(self, model: str, request_id: str) -> tuple[int, int]:
        """A waiting job's place in the fair queue (1: next; 0: no longer waiting) and the jobs waiting."""
        reply: Any = await self._position(args=[keys.fair_queue(model), request_id])
        return int(reply[0]), int(reply[1])

    async def submit(self, job: Job, *, max_queue: int, fairness: Fairness | None = None) -> str:
        """Admit `job` (429 having enqueued nothing when its model's queue, or with `fairness` its key's
        share of it, is full): to the own stream of the worker holding its prompt's longest prefix while
        that worker has a free slot (cache-aware dispatch, `queue/affinity.py`), else onto the model's
        shared stream (FIFO) or into the fair queue's waiting lists. Returns the stream it went to (the
        fair queue's prefix when it waits there)."""
        model = job.model
        found = affinity.fingerprints(job) if self.cache_aware else []
        prefixes = [p.digest for p in found[-affinity.MATCHED_PER_JOB:]]
        try:
            await self.ensure_group(model)
            # the channel this gateway follows its events on (`queue/feed.py`), named where it is known
            fields = (job if self.feed is None else job.model_copy(update={"feed": self.feed.channel})).encode()
            ((field, payload),) = fields.items()
            stream = keys.request_stream(model)
            mark = keys.job_admitted(job.id)
            # FIFO: the shared stream unless a holder is found; fair: only a holder with a free slot (it
            # starts the job at once, so there is nothing to order), else the fair queue's admission (straight
            # onto the stream for a parked worker when nothing waits, else the waiting lists); both scripts
            # in one round trip: the fair one finds the holder's admitted mark and queues nothing twice
            affinity_args = [max_queue, field, payload, keys.worker_stream(model, ""), keys.worker_info(""),
                             keys.worker_prefixes(""), self.heartbeat_ttl_s, keys.GROUP, ADMITTED_TTL_S,
                             0 if fairness is None else 1,
                             int(self.cache_aware and job.kind in affinity.SLOT_KINDS), *prefixes]
            affinity_keys = [stream, keys.dispatch_workers(model), keys.worker_heartbeats(model), mark]
            if fairness is None:
                entry: Any = await self._admit(keys=affinity_keys, args=affinity_args) or None
                admitted = None
            else:
                cap = fair.key_cap(max_queue, fairness.share)
                pipe = self.commands.pipeline(transaction=False)
                if prefixes:
                    pipe.eval(affinity.ADMIT, len(affinity_keys), *affinity_keys, *affinity_args)
                pipe.eval(fair.ADMIT, 2, stream, mark, keys.fair_queue(model), max_queue, cap, fairness.key,
                          job.priority or 0, fairness.weight, job.id, payload, int(job.enqueued_at * 1000),
                          ADMITTED_TTL_S, keys.GROUP, field, fair.BELL_FIELD)
                answers = await pipe.execute()
                if prefixes and answers[0]:
                    return _text(answers[0][0])
                admitted = fair.Admitted.of(answers[-1])
                entry = admitted if admitted.verdict == 1 else None
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError(
                "The queue is unavailable; try again shortly.", retry_after=RETRY_AFTER_S, code="queue_unavailable"
            ) from exc
        if entry is not None:
            if admitted is not None:
                return stream if admitted.direct else keys.fair_queue(model)
            return _text(entry[0])
        if admitted is None or fairness is None:
            raise OverloadedError(
                f"The model '{job.model}' has {max_queue} requests waiting; try again shortly.",
                retry_after=RETRY_AFTER_S,
            )
        wait = fair.retry_after_s(admitted, max_queue=max_queue, cap=fair.key_cap(max_queue, fairness.share),
                                  drain_per_s=fairness.drain_per_s, fallback_s=RETRY_AFTER_S)
        if admitted.verdict == 0:
            raise OverloadedError(f"The model '{job.model}' has {max_queue} requests waiting; try again in "
                                  f"{wait:g}s.", retry_after=wait)
        raise OverloadedError(
            f"This API key has {admitted.mine} requests waiting for '{job.model}', its share of the queue; "
            f"try again in {wait:g}s.", retry_after=wait, code="key_queue_full")

    def follow(self, request_id: str, *, queued: bool = False) -> Follower:
        """The request's events as they come, in batches, `None` after each silent wait (`follow.py`),
        its mailbox taken now: for a job about to be queued, no first read of its stream (`queued`: the
        job is queued already, read it first)."""
        reads = StreamReads(self.followers.connection_pool, keys.response_stream(request_id), self._read_timeout_s)
        return Follower(reads, self.feed, queued=queued)

    async def cancel(self, request_id: str) -> None:
        await self.commands.set(keys.cancel_flag(request_id), 1, ex=600)

    async def forget(self, request_id: str) -> None:
        await self.commands.delete(keys.response_stream(request_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
