"""The worker side of the queue: take requests for one model, decode them in batches, stream back.

One loop, one thread: read new requests for the free slots (`XREADGROUP`), run one batched decode
step, send the tokens (batched every few ms, one pipeline for all sequences), and between steps
renew leases, check cancel flags, reclaim requests of dead workers and beat the heartbeat.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from server.engine.batch_engine import BatchEngine, Finish, Output
from server.engine.embedder import Embedder
from server.engine.tools import call_grammar, with_tools
from server.errors import InvalidRequestError, SlmError
from server.queue import keys
from server.queue.messages import Job, SamplingParams, decode_event, encode_event
from server.tool_format import CALL_OPEN

log = logging.getLogger("slm.worker")

RESPONSE_TTL_S = 600
FLUSH_INTERVAL_S = 0.02
CANCEL_CHECK_INTERVAL_S = 0.05
IDLE_BLOCK_MS = 100


@dataclass
class WorkerConfig:
    model: str
    lease_s: float = 10.0
    max_deliveries: int = 3
    heartbeat_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    model_file: str = ""
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0


@dataclass(eq=False)
class _Active:
    """One request held by this worker: `n` sequences in the engine (`{job id}#{index}`)."""

    job: Job
    entry_id: str
    attempt: int
    remaining: set[int]
    choices: dict[int, _Choice] = field(default_factory=dict)
    last_flush: float = 0.0
    first_sent: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    finish_reason: str = "stop"
    cancelled: bool = False
    error: bool = False


def _finish_reason(fin: Finish) -> str:
    return "length" if fin.reason == "length" else "stop"


def grammar_for(response_format: dict[str, Any]) -> str | None:
    """GBNF for an OpenAI `response_format`; InvalidRequestError for a schema that cannot be compiled."""
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_GBNF
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema", {"type": "object"})
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise InvalidRequestError(f"The JSON schema cannot be enforced: {exc}", param="response_format") from None


class Worker:
    def __init__(self, engine: BatchEngine, client: redis.Redis, config: WorkerConfig) -> None:
        self.engine = engine
        self.redis = client
        self.config = config
        self.stream = keys.request_stream(config.model)
        self.active: dict[str, _Active] = {}
        self.embedder: Embedder | None = None
        self.waiting: deque[tuple[str, list[int], SamplingParams]] = deque()
        self.stopping = False
        self.ready = False
        self._held: dict[str, str] = {}  # request id -> entry id, read by the keep-alive thread
        self._held_lock = threading.Lock()
        self._closed = threading.Event()
        self._last_reap = 0.0
        self._last_cancel_check = 0.0
        self.last_tick = time.monotonic()
        self.orphan_check: Callable[[], bool] = lambda: False
        self.entry_changed: Callable[[], bool] = lambda: False

    # -- lifecycle ------------------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, keys.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self) -> None:
        """Serve until `stopping` is set and every held request has finished."""
        keeper = threading.Thread(target=self._keep_alive, name="keep-alive", daemon=True)
        keeper.start()
        try:
            self._loop()
        finally:
            self._closed.set()
            keeper.join(5)
        self._leave()

    def _keep_alive(self) -> None:
        """Heartbeat and lease renewal on their own thread, so a long decode step never lets a
        lease lapse (llama.cpp releases the GIL while it computes)."""
        interval = min(self.config.heartbeat_s, self.config.lease_s / 3)
        while not self._closed.wait(interval):
            try:
                if self.orphan_check():
                    log.warning("the supervising process is gone; finishing and exiting")
                    self.stopping = True
                if not self.stopping and self.entry_changed():
                    log.warning("this model's registry entry changed or was removed; draining, then exiting "
                                "so that a restart loads the new entry")
                    self.stopping = True
                self._heartbeat()
                with self._held_lock:
                    ids: list[Any] = list(self._held.values())
                if ids:
                    self.redis.xclaim(self.stream, keys.GROUP, self.config.worker_id, 0, ids, justid=True)
            except redis.RedisError as exc:
                log.debug("keep-alive failed: %s", exc)

    def _hold(self, request_id: str, entry_id: str | None) -> None:
        with self._held_lock:
            if entry_id is None:
                self._held.pop(request_id, None)
            else:
                self._held[request_id] = entry_id

    def _loop(self) -> None:
        backoff = 0.1
        while True:
            if self.stopping and not self.active:
                break
            try:
                if not self.ready:
                    self.ensure_group()
                    self.ready = True
                self.tick()
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1fs", type(exc).__name__, backoff)
                self._abandon_all()
                self.ready = False
                time.sleep(backoff)  # reconnect backoff, not synchronisation
                backoff = min(backoff * 2, 2.0)

    def _leave(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(keys.worker_heartbeats(self.config.model), self.config.worker_id)
            pipe.delete(keys.worker_info(self.config.worker_id))
            pipe.execute()
        except redis.RedisError:
            log.info("could not deregister from redis on exit")

    def _abandon_all(self) -> None:
        """Redis went away: the requests we hold will be redelivered or timed out by the gateway."""
        for request_id in self.engine.request_ids():
            self.engine.cancel(request_id)
        self.waiting.clear()
        while self.engine.active():
            self.engine.step()
        self.active.clear()
        with self._held_lock:
            self._held.clear()

    # -- one turn of the loop -------------------------------------------------------------------
    def tick(self) -> None:
        now = time.monotonic()
        self.last_tick = now
        if now - self._last_reap >= self.config.lease_s / 2 and not self.stopping:
            self._reap()
        if self.active and now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
            self._check_cancels()
        free = self.engine.free_slots() - len(self.waiting)
        if free > 0 and not self.stopping:
            block = None if self.engine.active() else IDLE_BLOCK_MS
            reply: Any = self.redis.xreadgroup(
                keys.GROUP, self.config.worker_id, {self.stream: ">"}, count=free, block=block
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._admit(_text(entry_id), fields, attempt=1)
        if self.engine.active():
            self._emit(self.engine.step())

    def _heartbeat(self) -> None:
        now = time.time()
        busy = self.engine.active()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.worker_heartbeats(self.config.model), {self.config.worker_id: now})
        pipe.zremrangebyscore(keys.worker_heartbeats(self.config.model), 0, now - 60)
        info_key = keys.worker_info(self.config.worker_id)
        pipe.hset(
            info_key,
            mapping={"model": self.config.model, "slots": self.engine.parallel, "busy": busy,
                     "file": self.config.model_file, "draining": int(self.stopping)},
        )
        pipe.expire(info_key, max(2, int(self.config.heartbeat_ttl_s)))
        pipe.execute()

    def _check_cancels(self) -> None:
        ids = list(self.active)
        pipe = self.redis.pipeline(transaction=False)
        for request_id in ids:
            pipe.exists(keys.cancel_flag(request_id))
        for request_id, flagged in zip(ids, pipe.execute(), strict=True):
            if flagged:
                self._cancel(request_id)

    def _cancel(self, job_id: str) -> None:
        act = self.active[job_id]
        for index in act.remaining:
            self.engine.cancel(f"{job_id}#{index}")
        queued = [w for w in self.waiting if w[0].rpartition("#")[0] == job_id]
        for item in queued:  # never started: finish them here as cancelled
            self.waiting.remove(item)
            act.remaining.discard(int(item[0].rpartition("#")[2]))
        if not act.remaining:
            act.cancelled = True
            self._send(keys.response_stream(job_id), {**self._final_event(act), "attempt": act.attempt})
            self._ack(act.entry_id)
            self.active.pop(job_id, None)
            self._hold(job_id, None)
        self._last_cancel_check = time.monotonic()

    def _reap(self) -> None:
        """Take over requests whose worker stopped renewing its lease; dead-letter the poison."""
        self._last_reap = time.monotonic()
        free = self.engine.free_slots()
        if free == 0:
            return
        min_idle = int(self.config.lease_s * 1000)
        reply: Any = self.redis.xautoclaim(self.stream, keys.GROUP, self.config.worker_id, min_idle, "0-0",
                                           count=free)
        claimed = reply[1]  # Redis 7 adds a third item (deleted ids), Redis 6.2 has two
        for entry_id_raw, fields in claimed:
            entry_id = _text(entry_id_raw)
            if not fields:
                self.redis.xack(self.stream, keys.GROUP, entry_id)
                continue
            pending = self.redis.xpending_range(self.stream, keys.GROUP, entry_id, entry_id, 1)
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            self._admit(entry_id, fields, attempt=deliveries)

    # -- requests -------------------------------------------------------------------------------
    def _admit(self, entry_id: str, fields: Any, *, attempt: int) -> None:
        try:
            job = Job.decode(fields)
        except ValueError:
            log.error("dropping a malformed queue entry %s", entry_id)
            self._ack(entry_id)
            return
        resp = keys.response_stream(job.id)
        if attempt > 1:
            last: Any = self.redis.xrevrange(resp, count=1)
            if last and _event_type(last[0][1]) in ("done", "error"):
                self._ack(entry_id)  # finished before a crash lost the ack
                return
            if attempt > self.config.max_deliveries:
                self._dead_letter(entry_id, job, fields, attempt)
                return
        if time.time() > job.deadline:
            self._fail(entry_id, job, attempt, 503, "queue_timeout",
                       "The request waited in the queue past its deadline.")
            return
        if self.redis.exists(keys.cancel_flag(job.id)):
            self._ack(entry_id)
            return
        if job.kind == "embedding":
            self._embed(entry_id, job, attempt)
            return
        try:
            params = job.params
            messages = job.messages or []
            if job.tools and job.tool_choice is not None:
                messages = with_tools(messages, job.tools, job.tool_choice)
                grammar = call_grammar(job.tools, job.tool_choice, parallel=job.parallel_tool_calls)
                trigger = CALL_OPEN if job.tool_choice == "auto" else None
                params = params.model_copy(update={"grammar": grammar, "grammar_trigger": trigger})
            elif job.response_format is not None:
                params = params.model_copy(update={"grammar": grammar_for(job.response_format)})
            if job.kind == "chat":
                tokens = self.engine.chat_tokens(messages)
            else:
                tokens = self.engine.completion_tokens(job.prompt or "")
            act = _Active(job=job, entry_id=entry_id, attempt=attempt, last_flush=time.monotonic(),
                          remaining=set(range(job.n)))
            seqs = [(f"{job.id}#{i}", params if params.seed is None or i == 0
                     else params.model_copy(update={"seed": params.seed + i})) for i in range(job.n)]
            first_id, first_params = seqs[0]
            self.engine.add(first_id, tokens, first_params)  # refuses what cannot fit, before anything starts
        except SlmError as exc:
            self._fail(entry_id, job, attempt, exc.status, exc.code, exc.message, param=exc.param,
                       error_type=exc.type)
            return
        self.waiting.extend((seq_id, tokens, p) for seq_id, p in seqs[1:])
        self._admit_waiting()
        self.active[job.id] = act
        self._hold(job.id, entry_id)
        self._send(resp, {"type": "started", "attempt": attempt, "worker": self.config.worker_id,
                          "prompt_tokens": len(tokens)})

    def _embed(self, entry_id: str, job: Job, attempt: int) -> None:
        """Embeddings are computed at once, between decode steps (small models embed in milliseconds)."""
        if self.embedder is None:
            self._fail(entry_id, job, attempt, 400, None, "This model does not serve embeddings.", param="model",
                       error_type="invalid_request_error")
            return
        try:
            vectors, used = [], 0
            for item in job.inputs or []:
                tokens = (self.engine.model.tokenize(item, add_special=True, parse_special=False)
                          if isinstance(item, str) else list(item))
                used += len(tokens)
                vectors.append(self.embedder.embed(tokens))
        except SlmError as exc:
            self._fail(entry_id, job, attempt, exc.status, exc.code, exc.message, param=exc.param,
                       error_type=exc.type)
            return
        resp = keys.response_stream(job.id)
        self._send(resp, {"type": "started", "attempt": attempt, "worker": self.config.worker_id,
                          "prompt_tokens": used})
        self._send(resp, {"type": "done", "attempt": attempt, "finish_reason": "stop", "embeddings": vectors,
                          "usage": {"prompt_tokens": used, "completion_tokens": 0}, "timings": {}})
        self._ack(entry_id)

    def _admit_waiting(self) -> None:
        """Choices of `n > 1` requests wait here for a free slot."""
        while self.waiting and self.engine.free_slots() > 0:
            seq_id, tokens, params = self.waiting.popleft()
            self.engine.add(seq_id, tokens, params)

    def _emit(self, outputs: list[Output]) -> None:
        now = time.monotonic()
        pipe = self.redis.pipeline(transaction=False)
        finished: list[_Active] = []
        touched: dict[str, _Active] = {}
        for out in outputs:
            job_id, _, index_text = out.request_id.rpartition("#")
            act = self.active.get(job_id)
            if act is None:
                continue
            index = int(index_text)
            choice = act.choices.setdefault(index, _Choice())
            if out.text:
                choice.text.append(out.text)
            if out.logprobs:
                choice.logprobs.extend(out.logprobs)
            choice.tokens += out.tokens
            touched[job_id] = act
            if out.finish is not None:
                self._flush_choice(pipe, act, index, choice)
                fin = out.finish
                act.remaining.discard(index)
                act.completion_tokens += fin.completion_tokens
                act.prompt_tokens = fin.prompt_tokens
                act.cached_tokens = max(act.cached_tokens, fin.cached_tokens)
                act.prompt_ms = max(act.prompt_ms, fin.prompt_ms)
                act.generation_ms = max(act.generation_ms, fin.generation_ms)
                act.cancelled = act.cancelled or fin.reason == "cancelled"
                if fin.reason == "error":
                    act.error = True
                if act.job.n > 1 and fin.reason != "error":
                    self._queue_event(pipe, act, {"type": "finish", "index": index,
                                                  "finish_reason": _finish_reason(fin)})
                else:
                    act.finish_reason = _finish_reason(fin)
                if not act.remaining:
                    self._queue_event(pipe, act, self._final_event(act))
                    pipe.xack(self.stream, keys.GROUP, act.entry_id)
                    pipe.xdel(self.stream, act.entry_id)
                    finished.append(act)
        for act in touched.values():
            if act in finished:
                continue
            due = not act.first_sent or now - act.last_flush >= FLUSH_INTERVAL_S
            if due:
                for index, choice in act.choices.items():
                    self._flush_choice(pipe, act, index, choice)
                act.first_sent = True
                act.last_flush = now
        if len(pipe):
            pipe.execute()
        for act in finished:
            self.active.pop(act.job.id, None)
            self._hold(act.job.id, None)
        self._admit_waiting()

    def _flush_choice(self, pipe: Any, act: _Active, index: int, choice: _Choice) -> None:
        if not (choice.text or choice.tokens):
            return
        event: dict[str, Any] = {"type": "delta", "index": index, "text": "".join(choice.text), "tokens": choice.tokens}
        if choice.logprobs:
            event["logprobs"] = choice.logprobs
        self._queue_event(pipe, act, event)
        choice.text = []
        choice.logprobs = []
        choice.tokens = 0

    @staticmethod
    def _final_event(act: _Active) -> dict[str, Any]:
        if act.error:
            return {"type": "error", "status": 500, "code": "generation_failed",
                    "message": "The model failed while generating.", "error_type": "server_error"}
        return {
            "type": "done",
            "finish_reason": act.finish_reason,
            "cancelled": act.cancelled,
            "usage": {"prompt_tokens": act.prompt_tokens, "completion_tokens": act.completion_tokens,
                      "cached_tokens": act.cached_tokens},
            "timings": {"prompt_ms": round(act.prompt_ms, 3), "predicted_ms": round(act.generation_ms, 3)},
        }

    def _queue_event(self, pipe: Any, act: _Active, event: dict[str, Any]) -> None:
        event["attempt"] = act.attempt
        resp = keys.response_stream(act.job.id)
        pipe.xadd(resp, encode_event(event))
        pipe.expire(resp, RESPONSE_TTL_S)

    def _send(self, resp: str, event: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(resp, encode_event(event))
        pipe.expire(resp, RESPONSE_TTL_S)
        pipe.execute()

    def _fail(self, entry_id: str, job: Job, attempt: int, status: int, code: str | None, message: str,
              *, param: str | None = None, error_type: str = "service_unavailable") -> None:
        self._send(keys.response_stream(job.id), {"type": "error", "attempt": attempt, "status": status,
                                                  "code": code, "message": message, "param": param,
                                                  "error_type": error_type})
        self._ack(entry_id)

    def _dead_letter(self, entry_id: str, job: Job, fields: Any, attempt: int) -> None:
        log.error("request %s failed on %d deliveries; dead-lettered", job.id, attempt - 1)
        record: dict[Any, Any] = {"job": job.model_dump_json(), "deliveries": attempt - 1}
        self.redis.xadd(keys.dead_letters(self.config.model), record)
        self._fail(entry_id, job, attempt, 500, "generation_failed",
                   f"The request failed on {attempt - 1} workers and was dead-lettered.",
                   error_type="server_error")

    def _ack(self, entry_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.stream, keys.GROUP, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event_type(fields: dict[bytes, bytes]) -> str | None:
    try:
        return str(decode_event(fields).get("type"))
    except (KeyError, ValueError):
        return None
