"""Serve one request: resolve the model, plan who may serve it, admit, and answer whole or streamed.

Everything that can be refused is refused before the first byte: validation, unknown model,
a full queue, no worker, a prompt too long (the worker measures it and answers before
generating). A candidate that cannot serve before then hands the request to the next one of the
plan (fallbacks, a router's targets: `serving/dispatch.py`; a router's choice: `serving/routing.py`).
After the first byte a failure becomes one error frame then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from server.backends.base import Generation, Result
from server.backends.health import DEFAULT_POLICY, HealthPolicy
from server.backends.hosted import HostedBackend
from server.backends.hosted_params import HostedParams, provider_messages
from server.backends.local import LocalBackend, LocalGeneration, refuse_for_local, wants_logprobs
from server.backends.upstream import load_litellm
from server.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    SlmError,
    UpstreamTimeoutError,
)
from server.metrics import Metrics
from server.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from server.queue import priority as priorities
from server.queue.client import QueueClient
from server.registry import AnyEntry, HostedModel, LocalModel, Registry, RouterModel, env_key
from server.serving.context import RequestContext
from server.serving.dispatch import Plan, falls_through, plan_for, reported, traits_of
from server.serving.embeddings import embeddings_body
from server.serving.formatting import Shape
from server.serving.presence import WorkerPresence
from server.serving.queue_notices import notices_then
from server.serving.queue_view import FairQueueing
from server.serving.routing import (
    UNREACHABLE,
    LocalLoad,
    Measurements,
    Route,
    Traits,
    choose,
    escalation,
    predict_cold,
    predict_hosted,
    predict_local,
)
from server.serving.streaming import Closing, IsDisconnected, start_tracked, stream, to_the_end, whole
from server.serving.tracking import MeasuredTracker, Tracker
from server.settings import Settings

log = logging.getLogger("slm.serving")

Endpoint = Literal["chat", "completions"]


@dataclass
class Answer:
    """Either a whole body or a stream of SSE frames, plus headers naming who served; `result()`: the
    generation's outcome (complete once the body is, or once the stream has ended), for a front door
    that says more than OpenAI's shapes do (which stop sequence ended the text)."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    result: Callable[[], Result] | None = None


class Service:
    def __init__(self, settings: Settings, registry: Registry, queue: QueueClient, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.queue = queue
        self.metrics = metrics
        self.presence = WorkerPresence()
        self.wanted: set[str] = set()  # cold models a router passed over: asked to load at the next refresh
        self.draining = False
        self.created = int(time.time())
        self._hosted: dict[str, HostedBackend] = {}
        self.local = LocalBackend(queue, queue_timeout_s=settings.queue_timeout_s,
                                  stall_timeout_s=settings.stall_timeout_s, lease_s=settings.lease_s,
                                  heartbeat_ttl_s=settings.heartbeat_ttl_s, trace=settings.trace_stages)
        self.upstream_health: HealthPolicy = DEFAULT_POLICY  # for hosted backends built from now on
        self.routing = Measurements()
        self.closing = Closing()
        self.fairq = FairQueueing(settings)

    # -- background -----------------------------------------------------------------------------
    async def refresh_presence(self) -> None:
        models = list(self.registry.local_models())
        ok = await self.queue.ping()
        self.presence.redis_ok = ok
        if ok and models:
            try:
                counts = await self.queue.live_workers(models, self.settings.heartbeat_ttl_s)
                depths = await self.queue.queue_depths(models)
                fair = await self.queue.fair_depths(models) if self.fairq.enabled else {}
            except Exception:
                self.presence.redis_ok = False
                return
            self.presence.counts = counts
            self.presence.depths = depths
            await self._refresh_residency()
            self.fairq.observe(fair, time.monotonic(), self.metrics)
            for model, n in counts.items():
                self.metrics.workers_ready.labels(model).set(n)
            for model, depth in depths.items():
                self.metrics.queue_depth.labels(model).set(depth + sum(self.fairq.view.waiting(model).values()))
        self.presence.checked_at = time.monotonic()

    async def _refresh_residency(self) -> None:
        try:
            self.presence.residency, self.presence.budget = await self.queue.residency()
        except Exception:  # Redis went away between two reads: nothing published
            self.presence.residency, self.presence.budget = {}, None
        self.metrics.observe_residency(self.presence.residency)
        wanted, self.wanted = self.wanted, set()
        if wanted:
            await self.queue.want(sorted(wanted))

    def readiness(self) -> list[str]:
        problems = []
        if not self.presence.redis_ok:
            problems.append("redis is unreachable")
        for model, entry in self.registry.local_models().items():
            if self.presence.counts.get(model, 0) < 1 and self.presence.expected_ready(model, entry):
                problems.append(f"no ready worker for model '{model}'")
        return problems

    # -- requests -------------------------------------------------------------------------------
    def resolve(self, name: str) -> tuple[str, AnyEntry]:
        found = self.registry.resolve(name)
        if found is None:
            raise ModelNotFoundError(name)
        return found

    async def chat(self, req: ChatCompletionRequest, is_disconnected: IsDisconnected,
                   context: RequestContext) -> Answer:
        messages = [m.for_template() for m in req.messages]
        return await self._serve("chat", req, {"messages": messages}, req.effective_max_tokens(), is_disconnected,
                                 context)

    async def completion(self, req: CompletionRequest, is_disconnected: IsDisconnected,
                         context: RequestContext) -> Answer:
        return await self._serve("completions", req, {"prompt": req.prompt_text()}, req.max_tokens, is_disconnected,
                                 context)

    async def embeddings(self, req: EmbeddingRequest, context: RequestContext) -> Answer:
        model, entry = self.resolve(req.model)
        if not isinstance(entry, LocalModel) or not entry.embeddings:
            raise InvalidRequestError(f"The model '{model}' does not serve embeddings.", param="model")
        if req.dimensions is not None:
            raise InvalidRequestError("The parameter 'dimensions' is not supported by this server.",
                                      param="dimensions")
        self._check_can_queue(model, entry)
        gen = await self.local.embedding(model, entry, req.input_list())
        await to_the_end(gen)
        used = gen.result.prompt_tokens
        context.charge(used)
        body = embeddings_body(model, gen.result.extra.get("embeddings") or [], used, req.encoding_format)
        return Answer({"x-slm-model": model, "x-slm-backend": "local"}, body=body)

    async def count_tokens(self, req: ChatCompletionRequest) -> int:
        """The prompt's length in tokens as the model that would serve it counts: a local model's own
        template and tokenizer (a `tokenize` job, nothing generated), litellm's counter for a hosted
        model; a router counts with its first target."""
        model, entry = self.resolve(req.model)
        if isinstance(entry, RouterModel):
            model = entry.targets[0]
            entry = self.registry.models[model]
        if isinstance(entry, HostedModel):
            counter = load_litellm().token_counter
            tools = [tool.model_dump(exclude_none=True) for tool in req.tools or []] or None
            return int(await asyncio.to_thread(counter, model=entry.litellm_model, messages=provider_messages(req),
                                               tools=tools))
        if not isinstance(entry, LocalModel):  # a router targeting a router is refused at load
            raise InvalidRequestError(f"The model '{model}' cannot count tokens.", param="model")
        refuse_for_local(req, model)
        self._check_can_queue(model, entry)
        gen = await self.local.tokenize(model, entry, req)
        await to_the_end(gen)
        return gen.result.prompt_tokens

    def hosted_backend(self, model: str, entry: HostedModel) -> HostedBackend:
        """One backend (concurrency slots, client) per hosted entry, rebuilt when the entry changes."""
        backend = self._hosted.get(model)
        if backend is None or backend.entry != entry:
            backend = HostedBackend(model, entry, self.metrics, health=self.upstream_health)
            self._hosted[model] = backend
        return backend

    def _current_hosted(self, model: str, entry: HostedModel) -> HostedBackend | None:
        backend = self._hosted.get(model)
        return backend if backend is not None and backend.entry == entry else None

    def upstream_up(self, model: str, entry: HostedModel) -> bool:
        """Whether a hosted model's upstream is presumed reachable (its circuit closed; never called: yes)."""
        backend = self._current_hosted(model, entry)
        return backend is None or backend.health.up

    async def _open_hosted(self, endpoint: Endpoint, req: ChatCompletionRequest | CompletionRequest, model: str,
                           entry: HostedModel, payload: dict[str, Any], arrived: float,
                           is_disconnected: IsDisconnected, context: RequestContext
                           ) -> tuple[Generation, Tracker, str, int]:
        params = HostedParams.from_request(req)
        messages = provider_messages(req) if isinstance(req, ChatCompletionRequest) else None
        gen = self.hosted_backend(model, entry).generation(endpoint, params, messages=messages,
                                                           prompt=payload.get("prompt"))
        track = Tracker(self.metrics, model, "hosted", arrived, context)
        began = time.perf_counter()
        try:
            await start_tracked(gen, track, is_disconnected)
        except UpstreamTimeoutError:
            self.routing.observe_hosted(model, time.perf_counter() - began)  # slow counts, so routers learn it
            raise
        self.routing.observe_hosted(model, time.perf_counter() - began)
        return gen, track, uuid.uuid4().hex, int(time.time())

    async def _open_local(self, endpoint: Endpoint, req: ChatCompletionRequest | CompletionRequest, model: str,
                          entry: LocalModel, payload: dict[str, Any], max_tokens: int | None, arrived: float,
                          is_disconnected: IsDisconnected, context: RequestContext, priority: int
                          ) -> tuple[LocalGeneration, Tracker, asyncio.Future[None] | None]:
        """Queue the request and wait for a worker to start it; a stream that may carry queue notices
        stops waiting after `SLM_QUEUE_NOTICE_AFTER_S` and hands back the wait still running."""
        refuse_for_local(req, model)
        self._check_can_queue(model, entry)
        fairness = self.fairq.admission(model, context.key)
        gen = await self.local.generation(endpoint, model, entry, req, payload, max_tokens, fairness, priority)
        pending = self.routing.open(model, max_tokens)
        track = MeasuredTracker(self.metrics, model, "local", arrived, context, routing=self.routing,
                                pending=pending)

        async def start() -> None:
            await start_tracked(gen, track, is_disconnected)
            self.routing.started(pending)
            self.metrics.queue_wait.labels(model, priorities.label(priority)).observe(gen.result.queue_ms / 1000)

        starting = asyncio.ensure_future(start())
        if fairness is not None and req.stream and context.queue_notices:
            done, _ = await asyncio.wait({starting}, timeout=self.settings.queue_notice_after_s)
            if not done:
                return gen, track, starting
        await starting
        return gen, track, None

    async def _position(self, model: str, request_id: str) -> tuple[int, int | None]:
        place, _waiting = await self.queue.position(model, request_id)
        return place, self.fairq.view.wait_ms(model, place)

    def _check_can_queue(self, model: str, entry: LocalModel) -> None:
        if self.draining:
            raise ServiceUnavailableError("The server is shutting down.", retry_after=1, code="shutting_down")
        if not self.presence.redis_ok:
            raise ServiceUnavailableError("The queue is unavailable; try again shortly.", retry_after=1,
                                          code="queue_unavailable")
        if self.presence.counts.get(model, 0) < 1 and not self.presence.waits_for(model, entry):
            raise ServiceUnavailableError(f"No worker is ready for model '{model}'.", retry_after=2,
                                          code="no_worker")

    def predict_ttft(self, model: str, entry: LocalModel | HostedModel, priority: int = priorities.HIGHEST) -> float:
        """Seconds to a first token a new request to `model` is predicted to wait (see `routing`)."""
        speed = self.routing.speed(model)
        if isinstance(entry, HostedModel):
            backend = self._current_hosted(model, entry)
            busy = backend is not None and backend.in_flight + backend.waiting >= entry.max_concurrency
            return predict_hosted(speed, has_free_slot=not busy,
                                  can_serve=entry.api_key_env is None or bool(env_key(entry)),
                                  reachable=backend is None or backend.health.admits_now())
        if self.presence.redis_ok and self.presence.cold(model, entry):
            return predict_cold(self.presence.load_s(model), speed)
        workers = self.presence.counts.get(model, 0) if self.presence.redis_ok else 0
        # with the fair queue, a request waits behind the jobs of its own class and higher only
        ahead = self.fairq.ahead_of(model, priority)
        load = LocalLoad(slots=entry.parallel * workers, depth=self.presence.depths.get(model, 0) + ahead)
        return predict_local(load, speed, self.routing.pending(model), self.routing.clock())

    def route(self, router: str, entry: RouterModel, traits: Traits, priority: int = priorities.HIGHEST) -> Route:
        """Where a router sends one request: an escalation rule's model, else by predicted TTFT."""
        escalated = escalation(entry.escalate, traits)
        if escalated is not None:
            found = Route(escalated, "escalated")
        else:
            predicted = {}
            for target in entry.targets:
                target_entry = self.registry.models.get(target)
                if isinstance(target_entry, LocalModel | HostedModel):
                    predicted[target] = self.predict_ttft(target, target_entry, priority)
                else:  # refused at load; only a registry swapped mid-request could get here
                    predicted[target] = UNREACHABLE
            found = choose(entry.targets, predicted, entry.ttft_objective_s)
            for target in entry.targets[:entry.targets.index(found.model)]:
                target_entry = self.registry.models.get(target)
                if isinstance(target_entry, LocalModel) and self.presence.cold(target, target_entry):
                    self.wanted.add(target)  # preferred but cold: load it for the next requests
            log.debug("router %s: predicted TTFT %s -> %s", router,
                      {k: round(v, 3) for k, v in predicted.items()}, found.model)
        self.metrics.router_decisions.labels(router, found.model, found.reason).inc()
        return found

    async def _serve(self, endpoint: Endpoint, req: ChatCompletionRequest | CompletionRequest,
                     payload: dict[str, Any], max_tokens: int | None, is_disconnected: IsDisconnected,
                     context: RequestContext) -> Answer:
        arrived = time.perf_counter()
        name, entry = self.resolve(req.model)
        if self.draining:
            raise ServiceUnavailableError("The server is shutting down.", retry_after=1, code="shutting_down")
        registry = self.registry
        priority = self.fairq.priority_for(context.key, req.priority_class())
        plan = plan_for(registry, name, entry,
                        lambda router, spec: self.route(router, spec, traits_of(req, payload), priority))
        await self._hold_tokens(req, payload, max_tokens, plan, context)
        failures: list[SlmError] = []
        for i, model in enumerate(plan.candidates):
            target = registry.models[model]
            try:
                if isinstance(target, RouterModel):  # refused at load; a router never serves itself
                    raise InvalidRequestError(f"The router '{model}' cannot be a target.", param="model")
                return await self._serve_one(endpoint, req, model, target, dict(payload), max_tokens, arrived,
                                             is_disconnected, plan, context, priority)
            except SlmError as exc:
                if not falls_through(exc, chosen_by_server=i > 0 or plan.router is not None):
                    raise
                failures.append(exc)
                if i + 1 < len(plan.candidates):
                    following = plan.candidates[i + 1]
                    self.metrics.fallbacks.labels(model, following, exc.metric_type).inc()
                    log.info("model %s could not serve (%s %s); trying %s", model, exc.status, exc.code, following)
        raise reported(failures)

    async def _hold_tokens(self, req: ChatCompletionRequest | CompletionRequest, payload: dict[str, Any],
                           max_tokens: int | None, plan: Plan, context: RequestContext) -> None:
        """Bound `n` and `n` x `max_tokens`, and reserve the most the request may use against its key's
        token limit: the prompt (4 characters a token) plus `n` x `max_tokens` (unset: a local model's
        context, the most it can write)."""
        n = req.n or 1
        if n > self.settings.max_n:
            raise InvalidRequestError(f"'n' is at most {self.settings.max_n} on this server (got {n}).", param="n")
        if max_tokens is not None and n * max_tokens > self.settings.max_n_tokens:
            raise InvalidRequestError(
                f"'n' x 'max_tokens' is at most {self.settings.max_n_tokens} on this server "
                f"(got {n} x {max_tokens}).", param="max_tokens")
        if context.usage is None:
            return
        contexts = [m.n_ctx for m in map(self.registry.models.get, plan.candidates) if isinstance(m, LocalModel)]
        each = max_tokens if max_tokens is not None else max(contexts, default=0)
        await context.reserve(len(json.dumps(payload)) // 4 + n * each)

    async def _serve_one(self, endpoint: Endpoint, req: ChatCompletionRequest | CompletionRequest, model: str,
                         entry: LocalModel | HostedModel, payload: dict[str, Any], max_tokens: int | None,
                         arrived: float, is_disconnected: IsDisconnected, plan: Plan,
                         context: RequestContext, priority: int) -> Answer:
        headers = plan.headers(model, entry.backend)
        waiting: asyncio.Future[None] | None = None
        if isinstance(entry, HostedModel):
            gen, track, gen_id, created = await self._open_hosted(endpoint, req, model, entry, payload, arrived,
                                                                  is_disconnected, context)
            with_tools = False  # a provider's tool calls come back as tool calls, never as text
        else:
            local, track, waiting = await self._open_local(endpoint, req, model, entry, payload, max_tokens,
                                                           arrived, is_disconnected, context, priority)
            gen, gen_id, created = local, local.job.id, int(local.job.enqueued_at)
            with_tools = isinstance(req, ChatCompletionRequest) and req.tool_mode() is not None
        # the wait it had (still queued: so far; the stream's comments say the rest), and its class
        waited = gen.result.queue_ms if waiting is None else (time.time() - local.job.enqueued_at) * 1000
        headers.update({"x-slm-queue-wait-ms": str(int(waited)), "x-slm-priority": str(priority)})
        shape = Shape(endpoint, ("chatcmpl-" if endpoint == "chat" else "cmpl-") + gen_id, created, model)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def frames() -> AsyncIterator[bytes]:
                return stream(gen, shape, track, self.closing, include_usage, req.n or 1, with_tools)

            if waiting is not None:
                job = local.job
                return Answer(headers, stream=notices_then(waiting, lambda: self._position(model, job.id),
                                                           job.enqueued_at, frames), result=lambda: gen.result)
            return Answer(headers, stream=frames(), result=lambda: gen.result)
        return Answer(headers, body=await whole(gen, shape, track, is_disconnected, self.closing,
                                                wants_logprobs(req), with_tools), result=lambda: gen.result)

    async def wait_closed(self) -> None:
        """Let the clean-ups still running finish (at shutdown, before the Redis clients close)."""
        await self.closing.wait()

