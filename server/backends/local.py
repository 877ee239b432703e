"""The gateway half of a local model: a request becomes a job on the model's queue, which one of its
workers decodes (`server/worker/worker.py`); its events become a `Generation`.

`LocalGeneration` follows a queued job's events: it waits for a worker to start it (queue timeout
-> 503), hides a redelivery that happens before any text was handed out, and turns a redelivery
or silence after that into a clear error rather than splicing two generations together.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from redis.exceptions import RedisError

from server.backends.base import Delta, Result
from server.errors import (
    ContextLengthError,
    GenerationError,
    InvalidRequestError,
    QueueTimeoutError,
    ServiceUnavailableError,
    SlmError,
)
from server.protocol import (
    MEDIA_INPUT,
    UNSUPPORTED_CHAT,
    UNSUPPORTED_COMPLETION,
    ChatCompletionRequest,
    CompletionRequest,
)
from server.queue.client import Fairness, QueueClient
from server.queue.events import ChoiceFinished, Done, Event, Failed, Started, TextDelta
from server.queue.follow import Follower
from server.queue.messages import Job, SamplingParams
from server.registry import LocalModel

log = logging.getLogger("slm.queue")

Endpoint = Literal["chat", "completions"]



def error_from_event(event: Failed) -> SlmError:
    status, message, code, param = event.status, event.message, event.code, event.param
    if code == "context_length_exceeded":
        return ContextLengthError(message, param=param or "messages")
    if status == 400:
        return InvalidRequestError(message, param=param, code=code)
    if code == "queue_timeout":
        return QueueTimeoutError(message, retry_after=1)
    if status == 503:
        return ServiceUnavailableError(message, retry_after=1, code=code)
    return GenerationError(message, code=code)


class LocalGeneration:
    def __init__(self, queue: QueueClient, job: Job, *, stall_timeout_s: float, lease_s: float,
                 heartbeat_ttl_s: float = 5.0, submitted: float | None = None,
                 follower: Follower | None = None, readmit: Callable[[], Awaitable[object]] | None = None) -> None:
        self.queue = queue
        self.job = job
        self.stall_timeout_s = stall_timeout_s
        self.heartbeat_ttl_s = heartbeat_ttl_s
        # before any text went out, a lost worker is survivable: allow time for the lease to lapse
        # and another worker to take the request over
        self.redelivery_wait_s = stall_timeout_s + 2 * lease_s
        self.result = Result()
        self.redelivered: str | None = None
        # its events: followed from before the job was queued when `follower` is given
        self._follower = follower if follower is not None else queue.follow(job.id, queued=True)
        self._batches = self._follower.batches
        self._buffer: deque[Event] = deque()
        # its admission again (idempotent: `QueueClient.submit`), run when Redis may have lost it (`_readmit`)
        self._readmit = readmit
        feed = self._follower.feed
        self._admitted_under = feed.generation if feed is not None else 0
        self._attempt = 0
        self._worker = ""  # the worker that started the current attempt
        self._handed_out = False
        self._finished = False
        self._last_event = time.monotonic()
        # a traced job's gateway-side marks (wall clock), joined with the worker's from `done`;
        # `submitted`: when the job was handed to the queue (a worker may read it before we resume)
        self._marks: dict[str, float] | None = (
            {"submitted": time.time() if submitted is None else submitted} if job.trace else None)

    async def _next_event(self) -> Event:
        while True:
            try:
                event = self._buffer.popleft() if self._buffer else await self._next_read()
            except (RedisError, OSError) as exc:
                raise ServiceUnavailableError(
                    "Lost the connection to the queue.", retry_after=1, code="queue_unavailable"
                ) from exc
            now = time.monotonic()
            if event is None:
                if self._attempt == 0:
                    if time.time() > self.job.deadline + 2.0:
                        raise QueueTimeoutError("No worker started the request before its deadline.",
                                                retry_after=1)
                    await self._readmit_if_resubscribed()
                elif now - self._last_event > (self.stall_timeout_s if self._handed_out else self.redelivery_wait_s):
                    if await self._readmit_if_unheld() or await self._still_evaluating_prompt():
                        self._last_event = now
                        continue
                    raise GenerationError("The worker stopped responding.", code="worker_lost")
                continue
            attempt = event.attempt
            if attempt < self._attempt:
                continue
            self._last_event = now
            if attempt > self._attempt and self._attempt > 0:
                if self._handed_out:
                    self.redelivered = "mid_stream"
                    raise GenerationError(
                        "The worker serving this request was lost mid-generation.", code="worker_lost"
                    )
                self.redelivered = "before_first_token"
                self.result = Result()
            if isinstance(event, Started):
                self._attempt = attempt
                self._worker = event.worker
                self.result.extra["worker"] = event.worker  # `timings.worker`: which worker served it
                self.result.queue_ms = (time.time() - self.job.enqueued_at) * 1000.0
                self.result.prompt_tokens = event.prompt_tokens
            return event

    async def _readmit_if_resubscribed(self) -> None:
        """A job not started yet is lost if Redis failed over before it reached the replica (replication
        is asynchronous): nothing would ever start it. Once the event feed has subscribed again (its
        connection was lost: an outage, maybe a failover), the job's admission runs once more. Where the
        job survived, its admitted mark makes that a no-op; where it was lost, it is queued again."""
        feed = self._follower.feed
        if self._readmit is None or feed is None or not feed.live or feed.generation == self._admitted_under:
            return
        try:
            await self._readmit()
        except ServiceUnavailableError:
            return  # Redis is not back yet: at the next silent tick
        self._admitted_under = feed.generation
        log.info("request %s: admitted again after the queue's connection was lost", self.job.id)

    async def _readmit_if_unheld(self) -> bool:
        """Silence after `started`, before any text, and no worker's running mark: no worker holds the
        request any more. Its worker may beat its heartbeat all the same (Redis failed over and lost the
        job, or the worker dropped it in an outage), so the heartbeat alone would have this wait last to
        the end. Its admission runs again: where the job survived that is a no-op (the lapse of its lease
        redelivers it), where it was lost it is queued again. True: wait on (until the job's deadline)."""
        if self._readmit is None or self._handed_out or time.time() > self.job.deadline:
            return False
        try:
            if await self.queue.held(self.job.id):
                return False
            await self._readmit()
        except (RedisError, OSError, ServiceUnavailableError):
            return False
        log.info("request %s: no worker holds it after its start; admitted again", self.job.id)
        return True

    async def _next_read(self) -> Event | None:
        batch = await anext(self._batches)
        if not batch:
            return None
        self._buffer.extend(batch[1:])
        return batch[0]

    def buffered(self) -> bool:
        return bool(self._buffer)

    async def _still_evaluating_prompt(self) -> bool:
        """Silence before the first text is no loss while the worker that started the request beats
        its heartbeat: a long prompt on a slow CPU can take longer to evaluate than the redelivery
        wait. The extension ends at the request's queue deadline."""
        if self._handed_out or not self._worker or time.time() > self.job.deadline:
            return False
        try:
            return await self.queue.worker_alive(self.job.model, self._worker, self.heartbeat_ttl_s)
        except (RedisError, OSError):
            return False

    async def start(self) -> None:
        """Wait until a worker has started the request; raise its refusal if it refused."""
        event = await self._next_event()
        if isinstance(event, Failed):
            self._finished = True
            raise error_from_event(event)
        if not isinstance(event, Started):
            raise GenerationError("The worker answered out of order.")

    async def deltas(self) -> AsyncIterator[str | Delta]:
        while True:
            event = await self._next_event()
            if isinstance(event, Started):
                continue
            if isinstance(event, TextDelta):
                if self._marks is not None and event.text and "first_read" not in self._marks:
                    self._marks["first_read"] = time.time()
                self.result.completion_tokens += event.tokens
                self._handed_out = self._handed_out or bool(event.text)
                yield Delta(event.index, event.text, event.logprobs)
            elif isinstance(event, ChoiceFinished):
                self.result.finish_reasons[event.index] = event.finish_reason
                yield Delta(event.index, "", None, event.finish_reason)
            elif isinstance(event, Done):
                self._finished = True
                usage = event.usage or {}
                timings = event.timings or {}
                self.result.finish_reason = event.finish_reason
                self.result.prompt_tokens = int(usage.get("prompt_tokens", self.result.prompt_tokens))
                self.result.completion_tokens = int(usage.get("completion_tokens", 0))
                self.result.prompt_ms = float(timings.get("prompt_ms", 0.0))
                self.result.predicted_ms = float(timings.get("predicted_ms", 0.0))
                self.result.extra["cached_tokens"] = int(usage.get("cached_tokens", 0))
                if event.stop_sequence is not None:
                    self.result.extra["stop_sequence"] = event.stop_sequence
                if event.embeddings is not None:
                    self.result.extra["embeddings"] = event.embeddings
                if self._marks is not None and event.trace:
                    self.result.extra["trace"] = {**event.trace, **self._marks}
                return
            elif isinstance(event, Failed):
                self._finished = True
                raise error_from_event(event)

    async def cancel(self) -> None:
        if not self._finished:
            await self.queue.cancel(self.job.id)

    async def close(self) -> None:
        await self._follower.close()
        if self._finished:  # else the worker still writes to it (cancelled): let it expire
            with contextlib.suppress(RedisError, OSError):
                await self.queue.forget(self.job.id)


class LocalBackend:
    """Local models' requests as queued jobs: `generation` submits one (a full queue: 429, nothing
    enqueued) and follows its events."""

    def __init__(self, queue: QueueClient, *, queue_timeout_s: float, stall_timeout_s: float, lease_s: float,
                 heartbeat_ttl_s: float, trace: bool = False) -> None:
        self.queue = queue
        self.trace = trace  # SLM_TRACE_STAGES: jobs ask their worker for stage marks
        self.queue_timeout_s = queue_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.lease_s = lease_s
        self.heartbeat_ttl_s = heartbeat_ttl_s

    async def submit(self, job: Job, entry: LocalModel, fairness: Fairness | None = None) -> LocalGeneration:
        submitted = time.time()  # before the XADD: the worker's `read` mark can never precede it
        follower = self.queue.follow(job.id)  # before the XADD too: its events reach a mailbox already there

        def admit() -> Awaitable[str]:
            return self.queue.submit(job, max_queue=entry.max_queue, fairness=fairness)

        try:
            await admit()
        except BaseException:
            await follower.close()
            raise
        return LocalGeneration(self.queue, job, stall_timeout_s=self.stall_timeout_s, lease_s=self.lease_s,
                               heartbeat_ttl_s=self.heartbeat_ttl_s, submitted=submitted, follower=follower,
                               readmit=admit)

    async def generation(self, endpoint: Endpoint, model: str, entry: LocalModel,
                         req: ChatCompletionRequest | CompletionRequest, payload: dict[str, Any],
                         max_tokens: int | None, fairness: Fairness | None = None,
                         priority: int | None = None) -> LocalGeneration:
        """`fairness` (SLM_QUEUE_POLICY=fair): the job waits in the fair queue in class `priority`."""
        params = sampling_params(req, max_tokens)
        if isinstance(req, ChatCompletionRequest):
            payload.update(chat_fields(req))
        now = time.time()
        job = Job(id=uuid.uuid4().hex, model=model, kind="chat" if endpoint == "chat" else "completion",
                  enqueued_at=now, deadline=now + self.queue_timeout_s, params=params, n=req.n or 1,
                  trace=True if self.trace else None, priority=priority if fairness is not None else None, **payload)
        return await self.submit(job, entry, fairness)

    async def tokenize(self, model: str, entry: LocalModel, req: ChatCompletionRequest) -> LocalGeneration:
        """A job that measures the chat prompt (template, tools) with the model's own tokenizer."""
        now = time.time()
        job = Job(id=uuid.uuid4().hex, model=model, kind="tokenize", enqueued_at=now,
                  deadline=now + self.queue_timeout_s, messages=[m.for_template() for m in req.messages],
                  **chat_fields(req))
        return await self.submit(job, entry)

    async def embedding(self, model: str, entry: LocalModel, inputs: list[str] | list[list[int]]) -> LocalGeneration:
        now = time.time()
        job = Job(id=uuid.uuid4().hex, model=model, kind="embedding", inputs=inputs, enqueued_at=now,
                  deadline=now + self.queue_timeout_s)
        return await self.submit(job, entry)


def chat_fields(req: ChatCompletionRequest) -> dict[str, Any]:
    """A chat job's fields besides its messages: the response format, the tools it may call."""
    fields: dict[str, Any] = {}
    if req.response_format is not None:
        fields["response_format"] = req.response_format.for_worker()
    tool_mode = req.tool_mode()
    if tool_mode is not None and req.tools:
        fields["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
        fields["tool_choice"] = tool_mode
        fields["parallel_tool_calls"] = req.parallel_tool_calls is not False
    return fields


def sampling_params(req: ChatCompletionRequest | CompletionRequest, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        repeat_penalty=req.repeat_penalty or 1.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed,
        stop=req.stop_list(),
        logit_bias=req.logit_bias_ids(),
        logprobs=wants_logprobs(req),
        top_logprobs=top_logprobs(req),
    )


def refuse_for_local(req: ChatCompletionRequest | CompletionRequest, model: str) -> None:
    """What a local model cannot do is refused by name (a hosted model's provider decides for itself)."""
    if isinstance(req, CompletionRequest):
        req.refuse_unsupported(UNSUPPORTED_COMPLETION, model)
        return
    req.refuse_unsupported(UNSUPPORTED_CHAT, model)
    for i, message in enumerate(req.messages):
        for j, kind in message.media_parts():
            raise InvalidRequestError(f"The model '{model}' does not accept {MEDIA_INPUT[kind]} input.",
                                      param=f"messages.{i}.content.{j}", code="unsupported_content")


def wants_logprobs(req: ChatCompletionRequest | CompletionRequest) -> bool:
    if isinstance(req, ChatCompletionRequest):
        return bool(req.logprobs)
    return req.logprobs is not None


def top_logprobs(req: ChatCompletionRequest | CompletionRequest) -> int:
    if isinstance(req, ChatCompletionRequest):
        return req.top_logprobs or 0
    return req.logprobs or 0
