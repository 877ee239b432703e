"""The worker side of the queue: take requests for one model, decode them in batches, stream back.

Three threads, so that the one that decodes never waits on Redis:

    decode      (the caller of `run`) admits what the intake took into free slots, runs one batched
                decode step after another and writes every step's tokens to Redis in one transaction
                through the outbox, which does not wait for the answer (`server/worker/outbox.py`)
    intake      takes requests off its own stream, then the model's shared one, for the free slots and
                reclaims those of dead workers (`server/worker/intake.py`)
    keep-alive  checks the cancel flags of held requests every `CANCEL_CHECK_INTERVAL_S`, beats the
                heartbeat (`keepalive.py`) and renews the leases of everything held

llama.cpp releases the GIL while it computes, so Redis round trips overlap the decode steps.

What each slot's KV cache holds is published as prompt-prefix fingerprints (`prefixes.py`), so the
gateway sends a conversation's next turn to this worker's own stream while it has a free slot.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from server.engine.batch_engine import BatchEngine, Output
from server.engine.embedder import Embedder
from server.errors import SlmError
from server.queue import keys, replies
from server.queue.events import Done, Event, Started
from server.queue.local_feed import LocalSender
from server.queue.messages import Job
from server.queue.replies import Command
from server.redis_connect import OUTAGE_ERRORS
from server.worker import instant, keepalive
from server.worker.admissions import Admissions
from server.worker.choices import Active, Choice, Waiting, admit_waiting, final_event, sequences
from server.worker.cohort import Cohort
from server.worker.grammar import constrained
from server.worker.handovers import Handovers
from server.worker.holdings import Holdings
from server.worker.intake import Intake, IntakeConfig, Taken
from server.worker.outbox import Outbox
from server.worker.prefixes import SlotPrefixes
from server.worker.step_timer import StepTimer

log = logging.getLogger("slm.worker")

CANCEL_CHECK_INTERVAL_S = 0.05
IDLE_WAIT_S = 0.1  # an idle decode thread waits this long at most for the intake, then ticks again
RUNNING_MARK_TTL_S = 600  # outlives any redelivery of the request (leases are seconds)


@dataclass
class WorkerConfig:
    model: str
    lease_s: float = 10.0
    max_deliveries: int = 3
    heartbeat_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    model_file: str = ""
    log_prompts: bool = False  # dead-letter entries keep the request's text only then
    dlq_maxlen: int = 1000
    dlq_ttl_s: int = 7 * 24 * 3600
    fair: bool = False  # SLM_QUEUE_POLICY=fair (see server/queue/fair.py)
    starvation_s: float = 10.0
    crash_marker: str = ""  # tests only (SLM_TEST_CRASH_MARKER): a prompt holding it aborts the process
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


class Worker:
    def __init__(self, engine: BatchEngine, client: redis.Redis, config: WorkerConfig) -> None:
        self.engine = engine
        self.redis = client
        self.config = config
        self.stream = keys.request_stream(config.model)
        self.active: dict[str, Active] = {}
        self.admissions = Admissions()  # what the requests admitted since the last step say, written at once
        self.embedder: Embedder | None = None
        self.waiting: deque[Waiting] = deque()
        self.claimable = 0  # waiting choices that may take the next free slot (read by the intake thread)
        self.stopping = False  # set by a signal handler or the keep-alive thread: plain flag, no lock
        self.holdings = Holdings()
        self.cohort = Cohort()
        self.outbox = Outbox(client, Handovers(LocalSender()))  # events for a gateway on this host: handed to it
        self.intake = Intake(client, IntakeConfig(config.model, config.worker_id, config.lease_s,
                                                  config.max_deliveries, config.log_prompts, config.dlq_maxlen,
                                                  config.dlq_ttl_s, config.heartbeat_ttl_s, fair=config.fair,
                                                  starvation_s=config.starvation_s), self.holdings, self._room)
        self.prefixes = SlotPrefixes(config.worker_id, config.heartbeat_ttl_s)
        self._closed = threading.Event()
        self._unmark: set[tuple[str, int]] = set()  # (request, attempt) dropped in an outage, mark to take back
        self.last_tick = time.monotonic()
        self.orphan_check: Callable[[], bool] = lambda: False
        self.entry_changed: Callable[[], bool] = lambda: False
        self.step_timer: StepTimer | None = None  # SLM_TRACE_STEPS: each step's phases timed

    @property
    def ready(self) -> bool:
        return self.intake.ready

    def _room(self) -> int:
        """Free slots not yet spoken for (read by the intake thread). None until the marks of what an
        outage dropped are taken back: the intake would otherwise reclaim those very requests and read
        this worker's own mark as a crash."""
        if self._unmark:
            return 0
        return self.engine.free_slots() - self.claimable - self.intake.inbox.qsize()

    # -- lifecycle ------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until `stopping` is set and every held request has finished."""
        keeper = threading.Thread(target=self._keep_alive, name="keep-alive", daemon=True)
        self.intake.start()
        keeper.start()
        try:
            self._loop()
        finally:
            self.intake.stop()
            self.intake.join(5)
            if not self.outbox.flush(10):
                log.warning("some replies could not be sent before exiting")
            self.outbox.close()
            self._closed.set()
            keeper.join(5)
        keepalive.leave(self.redis, model=self.config.model, worker_id=self.config.worker_id)

    def _keep_alive(self) -> None:
        """Cancel flags, heartbeat and lease renewal on their own thread, so a long decode step never
        lets a lease lapse (llama.cpp releases the GIL while it computes)."""
        beat_every = min(self.config.heartbeat_s, self.config.lease_s / 3)
        next_beat = 0.0
        while not self._closed.wait(CANCEL_CHECK_INTERVAL_S):
            try:
                flagged = keepalive.cancelled(self.redis, list(self.holdings.snapshot()))
                if flagged:
                    self.holdings.flag_cancelled(flagged)
                now = time.monotonic()
                if now < next_beat:
                    continue
                next_beat = now + beat_every
                if self.orphan_check():
                    log.warning("the supervising process is gone; finishing and exiting")
                    self.stopping = True
                if not self.stopping and self.entry_changed():
                    log.warning("this model's registry entry changed or was removed; draining, then exiting "
                                "so that a restart loads the new entry")
                    self.stopping = True
                keepalive.heartbeat(self.redis, model=self.config.model, worker_id=self.config.worker_id,
                                   model_file=self.config.model_file, slots=self.engine.parallel,
                                   busy=self.engine.active(), draining=self.stopping,
                                   kv_usage=self.engine.kv_usage(), ttl_s=self.config.heartbeat_ttl_s)
                for stream, entry_ids in self.holdings.entries_by_stream().items():
                    self.redis.xclaim(stream, keys.GROUP, self.config.worker_id, 0, list[Any](entry_ids), justid=True)
            except redis.RedisError as exc:
                log.debug("keep-alive failed: %s", exc)

    def _loop(self) -> None:
        backoff = 0.1
        while True:
            if self.stopping:
                self.intake.stop()
                if not (self.active or self.waiting or self.intake.alive() or not self.intake.inbox.empty()):
                    break
            try:
                if self._unmark:
                    self._unmark = {m for m in self._unmark if not replies.unmark_running(self.redis, *m)}
                self.tick()
                backoff = 0.1
            except OUTAGE_ERRORS as exc:
                self._abandon_all()
                if self.stopping:  # without Redis nothing held can be answered: waiting would only delay the exit
                    log.warning("redis unavailable (%s) while stopping; exiting now", type(exc).__name__)
                    break
                log.warning("redis unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                time.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, 2.0)

    def _abandon_all(self) -> None:
        """Redis went away: the requests we hold will be redelivered or timed out by the gateway. Their
        running marks are taken back once Redis answers again (`_unmark`): losing Redis between a
        request's admission and its `started` is no crash of this worker, so no poison verdict."""
        self._unmark.update((job_id, act.attempt) for job_id, act in self.active.items())
        for request_id in self.engine.request_ids():
            self.engine.cancel(request_id)
        self.waiting.clear()
        self.admissions.take()
        self.claimable = 0
        while self.engine.active():
            self.engine.step()
        self.active.clear()
        self.intake.drain()
        self.holdings.clear()
        self.outbox.reset()

    # -- one turn of the loop -------------------------------------------------------------------
    def tick(self) -> None:
        self.last_tick = time.monotonic()
        self.outbox.poll()
        if self.outbox.error is not None:
            raise self.outbox.error
        if self.intake.failure is not None:
            raise RuntimeError("the intake thread failed") from self.intake.failure
        for request_id in self.holdings.take_cancelled():
            if request_id in self.active:
                self._cancel(request_id)
        self._take_new(block=not self.engine.active() and not self.waiting)
        if not self.engine.active():
            return
        if self.step_timer is None:
            self._emit(self.engine.step())
            return
        self.step_timer.run(self.engine.step, self._emit)
        if not self.engine.active():
            self.step_timer.idle()

    def _take_new(self, *, block: bool) -> None:
        """Admit what the intake took, while there are free slots; wait a little for it when idle, and
        after the first newcomer of an idle engine, briefly for the rest of its cohort (`cohort.py`).
        What the admissions say goes out in one write, before the step that starts them."""
        try:
            self._admit_new(block=block)
        finally:
            self.outbox.put(self.admissions.take())

    def _admit_new(self, *, block: bool) -> None:
        while self.engine.free_slots() - self.claimable > 0:
            try:
                if block:
                    taken = self.intake.inbox.get(timeout=IDLE_WAIT_S)
                    self.cohort.first_arrived(time.monotonic())
                else:
                    wait = self.cohort.wait_s(time.monotonic())
                    taken = self.intake.inbox.get_nowait() if wait is None else self.intake.inbox.get(timeout=wait)
                    self.cohort.arrived()
            except queue.Empty:
                if block:
                    self.cohort.idle_tick()
                return
            block = False
            self._admit(taken)

    def _cancel(self, job_id: str) -> None:
        act = self.active[job_id]
        for index in act.remaining:
            self.engine.cancel(f"{job_id}#{index}")
        queued = [w for w in self.waiting if w[0].rpartition("#")[0] == job_id]
        for item in queued:  # never started: finish them here as cancelled
            self.waiting.remove(item)
            act.remaining.discard(int(item[0].rpartition("#")[2]))
        self._admit_waiting()
        if not act.remaining:
            act.cancelled = True
            self._finish(act, self._event(act, final_event(act)))

    def _reply(self, commands: list[Command]) -> None:
        """Written to Redis at once, the answer read later (`Outbox`): the next step starts without a
        round trip, and one connection keeps every reply in order."""
        self.outbox.put(commands)

    def _finish(self, act: Active, answer: list[Command]) -> None:
        """Send the last event and the ack; the slot is free for the next request."""
        self._reply(answer + self._ack(act))
        self._release(act)

    def _release(self, act: Active) -> None:
        self.active.pop(act.job.id, None)
        self.holdings.release(act.job.id)
        self.intake.room_freed()

    # -- requests -------------------------------------------------------------------------------
    def _admit(self, taken: Taken) -> None:
        job, entry_id, attempt, stream = taken.job, taken.entry_id, taken.attempt, taken.stream or self.stream
        trace = {"read": taken.read_at, "admitted": time.time()} if job.trace else None
        # Before running anything of the request's own (template, tokenizer, grammar, sampler): a worker
        # that dies from here until `started` is out leaves this mark for the next to find (poison).
        # The same round trip says the request admitted before this one got through its own work: its
        # `started` waits in `admissions`, and a crash from here on must not be blamed on it.
        if not replies.mark_running(self.redis, job.id, attempt, RUNNING_MARK_TTL_S, self.admissions.passed):
            log.info("request %s: attempt %d was overtaken by a newer one; dropped", job.id, attempt)
            self.holdings.release(job.id)
            return
        if self.config.crash_marker and self.config.crash_marker in (job.model_dump_json()):
            log.critical("test crash marker found in request %s: aborting", job.id)
            os.abort()
        if job.kind in ("embedding", "tokenize"):
            self._at_once(stream, entry_id, job, attempt)
            return
        try:
            messages, params = constrained(job)
            if job.kind == "chat":
                tokens = self.engine.chat_tokens(messages)
            else:
                tokens = self.engine.completion_tokens(job.prompt or "")
            act = Active(job=job, entry_id=entry_id, attempt=attempt, remaining=set(range(job.n)), trace=trace,
                         stream=stream)
            seqs = sequences(job, params)
            first_id, first_params = seqs[0]
            slot = self.engine.add(first_id, tokens, first_params)  # refuses what cannot fit, before anything starts
        except SlmError as exc:
            self._fail(stream, entry_id, job, attempt, exc.status, exc.code, exc.message, param=exc.param,
                       error_type=exc.type)
            return
        if trace is not None:
            trace["added"] = time.time()
        act.running = 1
        self.active[job.id] = act
        self.waiting.extend((seq_id, tokens, p) for seq_id, p in seqs[1:])
        self._admit_waiting()
        # started, and what this worker's slots now hold (for cache-aware dispatch): written before the step
        started = replies.job_event(job, Started(attempt, self.config.worker_id, len(tokens)), act.number())
        for source, target in self.engine.take_moves():  # kept caches the admissions moved aside
            self.prefixes.moved(source, target)
        self.admissions.add(job.id, attempt, started + self.prefixes.admitted(slot, job))

    def _at_once(self, stream: str, entry_id: str, job: Job, attempt: int) -> None:
        """Embeddings and token counts: answered between two decode steps, without a slot (`instant.py`)."""
        try:
            used, vectors = instant.answer(job, self.engine, self.embedder)
        except SlmError as exc:
            self._fail(stream, entry_id, job, attempt, exc.status, exc.code, exc.message, param=exc.param,
                       error_type=exc.type)
            return
        started = replies.job_event(job, Started(attempt, self.config.worker_id, used), 1)
        done = replies.job_event(job, Done(attempt, "stop", usage={"prompt_tokens": used, "completion_tokens": 0},
                                           timings={}, embeddings=vectors), 2)
        self._settle(job.id, stream, entry_id, started + done)

    def _admit_waiting(self) -> None:
        self.waiting, self.claimable = admit_waiting(self.waiting, self.active, self.engine)

    def _emit(self, outputs: list[Output]) -> None:
        """Write what a step produced, in one transaction: every sequence's new text (a token reaches the
        client as soon as it is made, as llama-server streams), a finished request's last event and its ack."""
        commands: list[Command] = []
        finished: list[Active] = []
        touched: dict[str, Active] = {}
        for out in outputs:
            job_id, _, index_text = out.request_id.rpartition("#")
            act = self.active.get(job_id)
            if act is None:
                continue
            index = int(index_text)
            if out.first_token and act.trace is not None and "first_token" not in act.trace:
                act.trace["first_token"] = time.time()
            choice = act.add(index, out)
            touched[job_id] = act
            if out.finish is not None:
                commands += self._flush_choice(act, index, choice)
                finish = act.finish_choice(index, out.finish)
                if finish is not None:
                    commands += self._event(act, finish)
                if not act.remaining:
                    finished.append(act)
        for act in touched.values():
            if act in finished:
                continue
            for index, choice in act.choices.items():
                commands += self._flush_choice(act, index, choice)
        for act in finished:
            commands += self._event(act, final_event(act)) + self._ack(act)
        self._reply(commands)
        for act in finished:
            self._release(act)
        self._admit_waiting()
        if finished:
            self.cohort.ended(len(finished), idle=not self.engine.active() and not self.waiting)

    def _flush_choice(self, act: Active, index: int, choice: Choice) -> list[Command]:
        event = choice.drain(index, act.attempt)
        return [] if event is None else self._event(act, event)

    def _ack(self, act: Active) -> list[Command]:
        return replies.ack(act.stream, act.entry_id, request_id=act.job.id, attempt=act.attempt)

    @staticmethod
    def _event(act: Active, event: Event) -> list[Command]:
        return replies.job_event(act.job, event, act.number())

    def _fail(self, stream: str, entry_id: str, job: Job, attempt: int, status: int, code: str | None, message: str,
              *, param: str | None = None, error_type: str = "service_unavailable") -> None:
        self._settle(job.id, stream, entry_id,
                     replies.error(job, attempt, status, code, message, param=param, error_type=error_type))

    def _settle(self, job_id: str, stream: str, entry_id: str, answer: list[Command]) -> None:
        """A request that never took a slot (refused, or embedded at once): its answer and its ack."""
        self._reply(answer + replies.ack(stream, entry_id))
        self.holdings.release(job_id)
