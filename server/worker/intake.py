"""A worker's intake: takes requests for its free slots off the model's streams, on a thread of its own.

The blocking `XREADGROUP` waits here, so the decode thread never spends part of a step reading. It reads
the worker's own stream (requests whose prompt prefix this worker holds, `queue/affinity.py`) before the
model's shared one, in one read; a shared entry beyond the free slots is given back (queued again on the
shared stream) so that no other worker sits idle while it waits here. A read that finds nothing takes the
oldest entry that has waited `affinity.STEAL_AFTER_S` in another worker's own stream. Every `lease_s / 2`
the intake also reclaims (`XAUTOCLAIM`) requests whose worker stopped renewing its lease, on the shared
stream and on every worker's own stream (never one it holds itself: a late renewal is no lost worker),
and deletes the empty own streams of workers gone. Each request
taken is screened before the decode thread sees it:

    already answered      its worker died after sending `done` but before the ack: acknowledged
    crashed a worker      its previous worker died while running the request's own work (the
                          `keys.job_running` mark of that attempt is set, its `started` never came):
                          dead-lettered at once, the client gets a 500 `worker_crashed`
    delivered too often   more than `max_deliveries` times: dead-lettered, the client gets a 500
    past its deadline     dropped with a 503 `queue_timeout`
    cancelled             its client left while it was queued: acknowledged (looked up for requests
                          queued long enough to have been cancelled, `UNCANCELLED_AGE_S`)

What passes is held (the keep-alive thread renews its lease from now on) and put in the inbox,
which the decode thread empties as slots free up.

A dead-letter entry records what happened, not what was asked: ids, model, kind, reason, attempt,
times and sizes; the request itself only with `SLM_LOG_PROMPTS`. The stream is capped
(`XADD MAXLEN ~ SLM_DLQ_MAXLEN`) and expires `SLM_DLQ_TTL_S` after its last entry.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from server.queue import affinity, fair, keys, replies
from server.queue.messages import JOB_FIELD, Job, decode_event
from server.redis_connect import OUTAGE_ERRORS
from server.worker.holdings import Holdings

log = logging.getLogger("slm.worker")

IDLE_BLOCK_MS = 100  # longest wait of one XREADGROUP; also how soon the intake notices `stop`
NO_ROOM_WAIT_S = 0.1  # with every slot taken, wait this long at most for one to free up
# A request younger than this cannot carry a cancel flag yet (a gateway first looks for a hung-up
# client `DISCONNECT_POLL_S` = 0.5 s after queueing it), so taking it skips that read: one round
# trip less before its prompt starts. Whatever slips through is cancelled by the keep-alive thread
# within `CANCEL_CHECK_INTERVAL_S`.
UNCANCELLED_AGE_S = 0.25


@dataclass
class Taken:
    entry_id: str
    job: Job
    attempt: int
    read_at: float = 0.0  # wall clock: when the intake read it off the stream (stage traces)
    stream: str = ""  # the stream it was read from (the model's shared one, or a worker's own)


@dataclass
class IntakeConfig:
    model: str
    worker_id: str
    lease_s: float
    max_deliveries: int
    log_prompts: bool = False
    dlq_maxlen: int = 1000
    dlq_ttl_s: int = 7 * 24 * 3600
    heartbeat_ttl_s: float = 5.0  # a worker silent this long is gone: its empty own stream is deleted
    fair: bool = False  # SLM_QUEUE_POLICY=fair: take through the fair queue's script, park when idle
    starvation_s: float = 10.0  # a lower class's job waiting this long is taken first ...
    aged_every: int = 4  # ... at most once every this many takes


class Intake:
    def __init__(self, client: redis.Redis, config: IntakeConfig, holdings: Holdings,
                 room: Callable[[], int]) -> None:
        self.client = client
        self.config = config
        self.holdings = holdings
        self.room = room  # free slots not yet spoken for, as the decode thread sees them
        self.stream = keys.request_stream(config.model)
        self.own = keys.worker_stream(config.model, config.worker_id)
        self.inbox: queue.Queue[Taken] = queue.Queue()
        self.ready = False
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._room_freed = threading.Event()
        self._last_reap = 0.0
        self._thread = threading.Thread(target=self._run, name="intake", daemon=True)
        self._take_fair = client.register_script(fair.TAKE)
        self._bells: list[str] = []  # bell entries read off the shared stream, acknowledged by the next take
        self._steal = client.register_script(affinity.STEAL)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Take nothing more (what is already in the inbox stays there for the decode thread)."""
        self._stop.set()
        self._room_freed.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def room_freed(self) -> None:
        self._room_freed.set()

    def drain(self) -> None:
        """Empty the inbox (Redis went away: what it held will be redelivered)."""
        while True:
            try:
                self.inbox.get_nowait()
            except queue.Empty:
                return

    def ensure_group(self) -> None:
        for stream in (self.stream, self.own):
            try:
                self.client.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.client.sadd(keys.dispatch_workers(self.config.model), self.config.worker_id)

    # -- the thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    self._turn()
                    backoff = 0.1
                except OUTAGE_ERRORS as exc:
                    log.warning("redis unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                    self.ready = False
                    self._stop.wait(backoff)  # reconnect backoff, not synchronisation
                    backoff = min(backoff * 2, 2.0)
                except redis.ResponseError as exc:
                    # NOGROUP: a stream's consumer group is gone; UNBLOCKED: a stream this intake was blocked
                    # on was deleted under it (a peer took an empty own stream for a gone worker's)
                    if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                        raise
                    log.warning("a stream or consumer group of %s is gone (%s); creating it again", self.stream,
                                str(exc).split(":")[-1].strip())
                    self.ready = False
        except BaseException as exc:  # the decode thread re-raises it: the worker exits and is restarted
            log.exception("the intake thread failed")
            self.failure = exc

    def _turn(self) -> None:
        if not self.ready:
            self.ensure_group()
            self.ready = True
        if time.monotonic() - self._last_reap >= self.config.lease_s / 2:
            self._reap()
        self._room_freed.clear()
        room = self.room()
        if room <= 0:
            self._room_freed.wait(NO_ROOM_WAIT_S)
            return
        entries = self._next_entries(room)
        for stream, entry_id, fields in entries:
            self._take(stream, entry_id, fields, attempt=1)
        if not entries:
            self._take_stalled()

    def _next_entries(self, room: int) -> list[tuple[str, str, Any]]:
        """Up to `room` new entries for this worker, as (stream, entry id, fields), its own stream's first
        (cache-aware dispatch sent them here). FIFO: one blocking `XREADGROUP` on its own stream and the
        shared one. Fair: one take script (its own stream, what is undelivered on the shared one, then the
        fair pick from the waiting lists, in one round trip); when that finds nothing, the worker parks
        (`P idle`) and blocks on the same read as FIFO's, where the next admission reaches it directly."""
        if not self.config.fair:
            return self._read_streams(room)
        taken: Any = self._take_fair(keys=[self.stream, self.own], args=[
            keys.fair_queue(self.config.model), keys.GROUP, self.config.worker_id, room,
            int(self.config.starvation_s * 1000), self.config.aged_every, JOB_FIELD, fair.BELL_FIELD, *self._bells])
        self._bells.clear()
        own, shared = taken
        out = [(self.own, _text(entry_id), _pairs(fields)) for entry_id, fields in own]
        out += [(self.stream, _text(entry_id), _pairs(fields)) for entry_id, fields in shared]
        if out:
            return out
        return self._read_streams(room, park=True)

    def _read_streams(self, room: int, *, park: bool = False) -> list[tuple[str, str, Any]]:
        """One blocking `XREADGROUP` on this worker's own stream and the shared one (a shared entry read
        beyond the free slots is given back); with `park`, first registered as parked in the fair queue, in
        the same round trip."""
        streams: dict[Any, Any] = {self.own: ">", self.stream: ">"}
        if park:
            pipe = self.client.pipeline(transaction=False)
            pipe.eval(fair.PARK, 1, self.stream, keys.fair_queue(self.config.model), self.config.worker_id, room,
                      keys.GROUP, fair.BELL_FIELD)
            pipe.xreadgroup(keys.GROUP, self.config.worker_id, streams, count=room, block=IDLE_BLOCK_MS)
            reply: Any = pipe.execute()[1]
        else:
            reply = self.client.xreadgroup(keys.GROUP, self.config.worker_id, streams, count=room, block=IDLE_BLOCK_MS)
        out: list[tuple[str, str, Any]] = []
        for stream_raw, entries in reply or []:
            stream = _text(stream_raw)
            for entry_id, fields in entries:
                if self._is_bell((stream, _text(entry_id), fields)):
                    continue
                if len(out) >= room and stream == self.stream:
                    self._give_back(_text(entry_id), fields)
                    continue
                out.append((stream, _text(entry_id), fields))
        return out

    def _is_bell(self, entry: tuple[str, str, Any]) -> bool:
        """A fair queue's bell entry (`fair.BELL_FIELD`): kept to be acknowledged by the next take."""
        stream, entry_id, fields = entry
        if stream != self.stream or not _is_bell_entry(fields):
            return False
        self._bells.append(entry_id)
        return True

    def _give_back(self, entry_id: str, fields: Any) -> None:
        """A shared entry read beyond the free slots (both streams had work at once): queued again at the end
        of the shared stream, where another worker with a free slot takes it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.stream, {_text(k): v for k, v in fields.items()})
        pipe.xack(self.stream, keys.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def _take_stalled(self) -> None:
        """The oldest entry that has waited `affinity.STEAL_AFTER_S` in another worker's own stream."""
        reply: Any = self._steal(keys=[keys.dispatch_workers(self.config.model)],
                                 args=[keys.GROUP, self.config.worker_id, keys.worker_stream(self.config.model, ""),
                                       int(affinity.STEAL_AFTER_S * 1000)])
        for stream_raw, entries in reply or []:
            for entry_id, fields in entries:
                fields_map = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
                self._take(_text(stream_raw), _text(entry_id), fields_map, attempt=1)

    def _reap(self) -> None:
        """Take over requests whose worker stopped renewing its lease, on the shared stream and on every
        worker's own stream; delete the empty own streams of workers gone."""
        self._last_reap = time.monotonic()
        room = self.room()
        if room <= 0:
            return
        model = self.config.model
        members = sorted(_text(w) for w in self.client.smembers(keys.dispatch_workers(model)))
        for stream in [self.stream] + [keys.worker_stream(model, w) for w in members]:
            room = self.room()
            if room <= 0:
                return
            self._reap_stream(stream, room)
        self._forget_gone(members)

    def _reap_stream(self, stream: str, room: int) -> None:
        min_idle = int(self.config.lease_s * 1000)
        reply: Any = self.client.xautoclaim(stream, keys.GROUP, self.config.worker_id, min_idle, "0-0", count=room)
        held = set(self.holdings.entries_by_stream().get(stream, ()))
        for entry_id_raw, fields in reply[1]:  # Redis 7 adds a third item (deleted ids), Redis 6.2 has two
            entry_id = _text(entry_id_raw)
            if entry_id in held:
                # this worker's own, still running: its keep-alive renewed late (a starved process) and the
                # claim renewed it; taken again it would start a second attempt beside the first
                continue
            if not fields or _is_bell_entry(fields):  # deleted meanwhile, or a bell a lost worker had read
                replies.send(self.client, replies.ack(stream, entry_id))
                continue
            pending = self.client.xpending_range(stream, keys.GROUP, entry_id, entry_id, 1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            self._take(stream, entry_id, fields, attempt=deliveries)

    def _forget_gone(self, members: list[str]) -> None:
        """The own streams of workers whose heartbeat stopped, once nothing is left in them."""
        model = self.config.model
        oldest = time.time() - self.config.heartbeat_ttl_s
        for worker_id in members:
            if worker_id == self.config.worker_id:
                continue
            beat = self.client.zscore(keys.worker_heartbeats(model), worker_id)
            stream = keys.worker_stream(model, worker_id)
            if (beat is None or float(beat) < oldest) and self.client.xlen(stream) == 0:
                pipe = self.client.pipeline(transaction=True)
                pipe.srem(keys.dispatch_workers(model), worker_id)
                pipe.delete(stream, keys.worker_prefixes(worker_id))
                pipe.execute()

    def _take(self, stream: str, entry_id: str, fields: Any, *, attempt: int) -> None:
        try:
            job = Job.decode(fields)
        except ValueError:
            log.error("dropping a malformed queue entry %s", entry_id)
            replies.send(self.client, replies.ack(stream, entry_id))
            return
        if attempt > 1:
            last: Any = self.client.xrevrange(keys.response_stream(job.id), count=1)
            if last and _event_type(last[0][1]) in ("done", "error"):
                replies.send(self.client, replies.ack(stream, entry_id))  # finished before a crash lost the ack
                return
            if self._crashed_its_worker(job, attempt, last):
                log.error("request %s: its worker died while starting it (attempt %d); dead-lettered, not retried",
                          job.id, attempt - 1)
                self._dead_letter(stream, entry_id, job, attempt, "worker_crashed",
                                  "A worker crashed while starting this request; it was dead-lettered and will "
                                  "not be retried.")
                return
            if attempt > self.config.max_deliveries:
                log.error("request %s failed on %d deliveries; dead-lettered", job.id, attempt - 1)
                self._dead_letter(stream, entry_id, job, attempt, "generation_failed",
                                  f"The request failed on {attempt - 1} workers and was dead-lettered.")
                return
        if time.time() > job.deadline:
            self._settle(stream, entry_id, replies.error(job, attempt, 503, "queue_timeout",
                                                 "The request waited in the queue past its deadline."))
            return
        if time.time() - job.enqueued_at >= UNCANCELLED_AGE_S and self.client.exists(keys.cancel_flag(job.id)):
            replies.send(self.client, replies.ack(stream, entry_id))
            return
        self.holdings.hold(job.id, stream, entry_id)
        self.inbox.put(Taken(entry_id, job, attempt, time.time(), stream))

    def _crashed_its_worker(self, job: Job, attempt: int, last: Any) -> bool:
        """Did the previous delivery's worker die inside the request's own work? Its mark says it began;
        no event of that attempt (the first is `started`) and no passed mark (set by that worker's next
        admission) say it never got through."""
        mark: Any = self.client.get(keys.job_running(job.id))
        if mark is None or int(mark) != attempt - 1:
            return False  # lost before it began (or a worker that never marked): redeliver
        if last and _event_attempt(last[0][1]) >= attempt - 1:
            return False
        passed: Any = self.client.get(keys.job_passed(job.id))  # admitted whole, its `started` not yet out
        return passed is None or int(passed) != attempt - 1

    def _dead_letter(self, stream: str, entry_id: str, job: Job, attempt: int, reason: str, message: str) -> None:
        key = keys.dead_letters(self.config.model)
        record: dict[Any, Any] = {
            "id": job.id, "model": job.model, "kind": job.kind, "reason": reason, "attempt": attempt - 1,
            "enqueued_at": job.enqueued_at, "dead_at": round(time.time(), 3), "worker": self.config.worker_id,
            "n": job.n, "max_tokens": job.params.max_tokens or 0, "messages": len(job.messages or []),
            "prompt_chars": _prompt_chars(job), "tools": len(job.tools or []),
            "response_format": (job.response_format or {}).get("type", "text"),
        }
        if self.config.log_prompts:
            record["job"] = job.model_dump_json()
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(key, record, maxlen=self.config.dlq_maxlen, approximate=True)
        pipe.expire(key, self.config.dlq_ttl_s)
        pipe.execute()
        self._settle(stream, entry_id, replies.error(job, attempt, 500, reason, message, error_type="server_error"))

    def _settle(self, stream: str, entry_id: str, answer: list[replies.Command]) -> None:
        replies.send(self.client, answer + replies.ack(stream, entry_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_bell_entry(fields: dict[Any, Any]) -> bool:
    return fair.BELL_FIELD.encode() in fields or fair.BELL_FIELD in fields


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A stream entry's fields as a script returns them (a flat list) -> a dict, as redis-py gives them."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _prompt_chars(job: Job) -> int:
    texts = [str(m.get("content") or "") for m in job.messages or []]
    return sum(map(len, texts)) + len(job.prompt or "") + sum(len(i) for i in job.inputs or [])


def _event_attempt(fields: dict[bytes, bytes]) -> int:
    try:
        return int(decode_event(fields).get("attempt", 1))
    except (KeyError, ValueError):
        return 0


def _event_type(fields: dict[bytes, bytes]) -> str | None:
    try:
        return str(decode_event(fields).get("type"))
    except (KeyError, ValueError):
        return None
