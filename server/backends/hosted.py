"""Hosted LLMs through litellm: one `HostedBackend` per registry entry, one `HostedGeneration` per request.

The provider is always called with `stream=True` (whole answers are assembled by the service from
the same deltas), and `start()` waits for the first chunk: every refusal or failure the provider
gives before that is raised from `start()`, before any byte reaches the client, and only there
are retries made (`entry.retries`, for connection failures and 5xx only). A failure after the
first chunk raises from `deltas()`; the service turns it into one error frame then `[DONE]`.
Concurrency per model is bounded by `entry.max_concurrency`: a slot is held from `start()` to
`close()`; a request that finds no slot within `entry.timeout` gets 429 `hosted_busy`
(a spill-over router can read `in_flight` / `waiting` to avoid that).

Upstream health is passive (`server.backends.health`): each request's outcome before its first chunk
feeds the backend's circuit; after `FAILURES_TO_OPEN` consecutive failures that are the upstream's fault
the model is `unreachable` and requests fail at once (503 `upstream_unavailable`, so a fallback chain
moves on) until, after the cool-down, one trial request finds it answering again.

Errors are mapped in one place, `server.backends.upstream.map_upstream_error` (its docstring has
the table); retries happen only for what it calls retryable (connection failures, 5xx).
litellm invents `finish_reason="stop"` when a stream just ends: we check what the provider sent,
and such a stream is a 502 `upstream_truncated`, never a silently short answer. The provider key
never leaves these modules: messages are scrubbed of it, and mapped errors are raised `from None`
so no traceback carries litellm's own text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from server.backends.base import Delta, Result
from server.backends.health import DEFAULT_POLICY, HealthPolicy, UpstreamHealth
from server.backends.hosted_chunks import RefusalTap, read_chunk, usage_details
from server.backends.hosted_params import HostedParams
from server.backends.upstream import (
    UpstreamFailure,
    load_litellm,
    map_upstream_error,
    provider_of,
    scrub,
)
from server.errors import OverloadedError, SlmError, UpstreamError
from server.metrics import Metrics
from server.registry import HostedModel

log = logging.getLogger("slm.hosted")

__all__ = ["HostedBackend", "HostedBackends", "HostedGeneration", "HostedParams"]

Endpoint = Literal["chat", "completions"]

class HostedBackend:
    """One hosted registry entry: its concurrency slots, its key lookup, its metrics and error mapping."""

    def __init__(self, name: str, entry: HostedModel, metrics: Metrics, *, retry_backoff_s: float = 0.25,
                 slot_timeout_s: float | None = None, health: HealthPolicy = DEFAULT_POLICY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.entry = entry
        self.metrics = metrics
        self.provider = provider_of(entry.litellm_model)
        self.retry_backoff_s = retry_backoff_s
        self.slot_timeout_s = entry.timeout if slot_timeout_s is None else slot_timeout_s
        self.in_flight = 0
        self.waiting = 0
        self._slots = asyncio.Semaphore(entry.max_concurrency)
        self.litellm = load_litellm()
        self.health = UpstreamHealth(name, health, clock=clock, on_change=self._health_changed)
        metrics.upstream_up.labels(name).set(1)

    def _health_changed(self, up: bool) -> None:
        self.metrics.upstream_up.labels(self.name).set(1 if up else 0)

    def problems(self) -> list[str]:
        """Readiness problems (never the key itself)."""
        env = self.entry.api_key_env
        if env and not os.environ.get(env):
            return [f"hosted model '{self.name}': the environment variable {env} is not set"]
        return []

    def api_key(self) -> str | None:
        env = self.entry.api_key_env
        if not env:
            return None
        key = os.environ.get(env)
        if not key:
            raise UpstreamError(f"The hosted model '{self.name}' has no API key ({env} is not set).",
                                code="upstream_misconfigured")
        return key

    def generation(self, endpoint: Endpoint, params: HostedParams, *, messages: list[dict[str, Any]] | None = None,
                   prompt: str | None = None) -> HostedGeneration:
        return HostedGeneration(self, endpoint, params, messages=messages, prompt=prompt)

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            async with asyncio.timeout(self.slot_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise OverloadedError(f"The hosted model '{self.name}' is at its concurrency limit.",
                                  code="hosted_busy", retry_after=1) from None
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()

    def failed(self, exc: BaseException, *, secrets: tuple[str, ...], param: str) -> UpstreamFailure:
        failure = map_upstream_error(exc, model=self.name, timeout=self.entry.timeout, param=param, secrets=secrets)
        self.metrics.upstream_errors.labels(self.name, self.provider, failure.label).inc()
        level = logging.DEBUG if failure.error.status == 400 else logging.WARNING
        log.log(level, "hosted model %s (%s): upstream failure %s: %s", self.name, self.provider, failure.label,
                scrub(failure.error.message, secrets))
        log.debug("hosted model %s: litellm raised %s: %s", self.name, type(exc).__name__,
                  scrub(str(exc), secrets)[:1000])
        return failure


class HostedBackends:
    """The backends of the registry's hosted entries, by name; an entry edited by a reload gets a new one
    (generations in flight keep the old one, and its slots, until they end)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._by_name: dict[str, HostedBackend] = {}

    def get(self, name: str, entry: HostedModel) -> HostedBackend:
        backend = self._by_name.get(name)
        if backend is None or backend.entry != entry:
            backend = self._by_name[name] = HostedBackend(name, entry, self.metrics)
        return backend


def _finish_probe(stream: Any) -> Any:
    """The litellm object that records whether the provider itself sent a finish reason, or None.

    litellm hands out "stop" when a stream simply ends; only its `CustomStreamWrapper` knows better
    (`received_finish_reason`). For legacy completions it sits two async generators deep, inside
    `TextCompletionStreamWrapper`, so this walks wrappers and live generator frames (a few levels,
    while the stream is open). Not found -> None, and the chunks are trusted; the tests pin both paths.
    """
    frontier = [stream]
    for _ in range(4):
        found: list[Any] = []
        for item in frontier:
            if hasattr(item, "received_finish_reason"):
                return item
            inner = getattr(item, "completion_stream", None)
            if inner is not None:
                found.append(inner)
            frame = getattr(item, "ag_frame", None)
            if frame is not None:
                found.extend(v for v in frame.f_locals.values()
                             if hasattr(v, "received_finish_reason") or hasattr(v, "ag_frame"))
        frontier = found
    return None


# What litellm's stream wrapper raises (wrapped in its MidStreamFallbackError) when an OpenAI-style
# stream's body ends cleanly without a finish reason or [DONE]; older releases ended silently instead,
# which `_provider_finished` catches. A body cut mid-chunk is another error: the stream broke.
_CLEAN_EOF_WITHOUT_FINISH = "Stream ended before a finish_reason was received"


def _ended_without_finish(exc: BaseException) -> bool:
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if _CLEAN_EOF_WITHOUT_FINISH in str(item):
            return True
        original = getattr(item, "original_exception", None)
        pending += [item.__cause__, item.__context__, original if isinstance(original, BaseException) else None]
    return False


def _provider_finished(probe: Any) -> bool:
    if probe is None:
        return True  # an unknown litellm shape: trust the chunks
    return bool(probe.received_finish_reason or getattr(probe, "intermittent_finish_reason", None))


async def _close_stream(stream: Any) -> None:
    for candidate in (stream, getattr(stream, "completion_stream", None)):
        closer = getattr(candidate, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception:
                log.debug("closing a hosted stream failed", exc_info=True)
            return


class HostedGeneration:
    """One request to a hosted model, with the same face as `LocalGeneration`."""

    def __init__(self, backend: HostedBackend, endpoint: Endpoint, params: HostedParams, *,
                 messages: list[dict[str, Any]] | None, prompt: str | None) -> None:
        self.backend = backend
        self.endpoint = endpoint
        self.params = params
        self.messages = messages
        self.prompt = prompt
        self.result = Result()
        self.redelivered: str | None = None
        self._secrets: tuple[str, ...] = ()
        self._stream: Any = None
        self._first: Any = None
        self._probe: Any = None
        self._holding = False
        self._cancelled = False
        self._first_at = 0.0
        self._failure: UpstreamFailure | None = None  # the last attempt's, while `start()` runs
        self._refusals = RefusalTap()

    @property
    def _param(self) -> str:
        return "messages" if self.endpoint == "chat" else "prompt"

    def _fail(self, exc: BaseException) -> UpstreamFailure:
        return self.backend.failed(exc, secrets=self._secrets, param=self._param)

    async def _call(self, api_key: str | None) -> Any:
        entry = self.backend.entry
        kwargs: dict[str, Any] = {"model": entry.litellm_model, "stream": True, "timeout": entry.timeout,
                                  "stream_options": {"include_usage": True}, "max_retries": 0, **self.params.kwargs()}
        if entry.api_base:
            kwargs["api_base"] = entry.api_base
        if api_key:
            kwargs["api_key"] = api_key
        litellm = self.backend.litellm
        if self.endpoint == "chat":
            return await litellm.acompletion(messages=self.messages, **kwargs)
        return await litellm.atext_completion(prompt=self.prompt, **kwargs)

    async def start(self) -> None:
        """Take a slot, call the provider and wait for its first chunk (retrying only up to here)."""
        backend = self.backend
        began = time.monotonic()
        api_key = backend.api_key()
        self._secrets = (api_key,) if api_key else ()
        trial = backend.health.admit()  # an open circuit refuses here: no slot waited for, no call made
        try:
            await backend.acquire()
            self._holding = True
            acquired = time.monotonic()
            self.result.queue_ms = (acquired - began) * 1000.0
            sent = await self._first_chunk(api_key)
        except BaseException:
            failure, self._failure = self._failure, None
            if failure is None:  # never reached the upstream (no slot, the client left, cancelled)
                backend.health.abandoned(trial=trial)
            elif failure.upstream_down:
                backend.health.failed(trial=trial)
            else:  # a 4xx: the upstream answered
                backend.health.succeeded()
            await self.close()  # the slot goes back even if the caller forgets close()
            raise
        backend.health.succeeded()
        self._first_at = time.monotonic()
        self._probe = _finish_probe(self._stream)
        backend.metrics.upstream_latency.labels(backend.name, backend.provider).observe(self._first_at - sent)
        self.result.prompt_ms = (self._first_at - acquired) * 1000.0

    async def _first_chunk(self, api_key: str | None) -> float:
        """Call until a first chunk arrives; return when the successful attempt was sent."""
        entry = self.backend.entry
        attempts = 1 + entry.retries
        for attempt in range(attempts):
            sent = time.monotonic()
            try:
                async with asyncio.timeout(entry.timeout):
                    self._stream = await self._call(api_key)
                    if self.endpoint == "chat":
                        self._refusals.wrap(self._stream)
                    self._first = await anext(aiter(self._stream), None)
                return sent
            except Exception as exc:
                await self._drop_stream()
                failure = self._failure = self._fail(exc)
                if not failure.retryable or attempt == attempts - 1:
                    raise failure.error from None
            await asyncio.sleep(self.backend.retry_backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _next(self) -> Any:
        async with asyncio.timeout(self.backend.entry.timeout):
            return await anext(self._stream, None)

    def buffered(self) -> bool:
        return False  # each upstream chunk goes out as it comes

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's pieces as they come; every choice seen gets a finish (litellm passes on only
        the first choice's, so the others take the last one the provider sent)."""
        chunk, self._first = self._first, None
        pieces = 0
        finishes: dict[int, str] = {}
        seen: set[int] = set()
        last_finish: str | None = None
        usage: Any = None
        try:
            while chunk is not None:
                read = read_chunk(chunk, self.endpoint == "chat")
                usage = read.usage or usage
                for delta in [*self._refusals.drain(), *read.deltas]:
                    seen.add(delta.index)
                    if delta.finish_reason is not None:
                        finishes[delta.index] = last_finish = delta.finish_reason
                    else:
                        pieces += 1
                    yield delta
                chunk = await self._next()
        except Exception as exc:
            if self._cancelled:
                return
            if _ended_without_finish(exc):  # litellm's own word for a body that simply ended
                raise self._truncated() from None
            error = self._fail(exc).error
            if error.code == "upstream_unreachable":
                error = UpstreamError(f"The hosted model '{self.backend.name}' stream broke off mid-answer.",
                                      code="upstream_stream_broken")
            raise error from None
        if not _provider_finished(self._probe):
            raise self._truncated()
        for delta in self._refusals.drain():
            seen.add(delta.index)
            yield delta
        for index in sorted(seen - set(finishes)):
            finishes[index] = last_finish or "stop"
            yield Delta(index, finish_reason=finishes[index])
        self.result.finish_reason = finishes.get(0, last_finish or "stop")
        self.result.finish_reasons.update(finishes)
        self.result.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        self.result.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0) or pieces
        self.result.extra.update(usage_details(usage))
        self.result.predicted_ms = (time.monotonic() - self._first_at) * 1000.0

    def _truncated(self) -> SlmError:
        message = f"The hosted model '{self.backend.name}' stream ended before it finished."
        return self._fail(UpstreamError(message, code="upstream_truncated")).error

    async def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close_stream(stream)

    async def cancel(self) -> None:
        """Stop the upstream generation (closing the connection is how a provider learns of it)."""
        self._cancelled = True
        await self._drop_stream()

    async def close(self) -> None:
        await self._drop_stream()
        if self._holding:
            self._holding = False
            self.backend.release()
