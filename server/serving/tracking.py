"""Per-request bookkeeping: latencies and tokens into the metrics, the tokens used charged to the
request's API key (its `RequestContext`'s usage), and what a local request teaches the router."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from server.backends.base import Result
from server.errors import GenerationError, SlmError
from server.metrics import Metrics
from server.serving.context import RequestContext
from server.serving.formatting import timings
from server.serving.routing import Measurements, Pending
from server.serving.stages import breakdown

trace_log = logging.getLogger("slm.trace")


class Tracker:
    """Per-request latency bookkeeping, recorded into the metrics; the tokens used, charged to the
    request's API key when it is token-limited, and its text logged when prompts are (`context`)."""

    def __init__(self, metrics: Metrics, model: str, backend: str, arrived: float, context: RequestContext) -> None:
        self.m = metrics
        self.labels = (model, backend)
        self.arrived = arrived
        self.first: float | None = None
        self.first_wall = 0.0  # wall clock of the first token, for stage traces
        self.last: float | None = None
        self.gone = False
        self.done = False
        self.context = context
        self.transcript = context.transcript  # None unless SLM_LOG_PROMPTS
        self.result: Result | None = None  # the started generation's, for usage if it never finishes
        self._ttft = metrics.ttft.labels(*self.labels)  # looked up once: `token` runs for every token
        self._itl = metrics.itl.labels(*self.labels)
        metrics.in_flight.labels(*self.labels).inc()

    def started(self, result: Result) -> None:
        self.result = result
        self.m.queue_time.labels(*self.labels).observe(result.queue_ms / 1000.0)

    def token(self, text: str) -> None:
        if self.transcript is not None:
            self.transcript.add(text)
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.first_wall = time.time()
            self._ttft.observe(now - self.arrived)
        elif self.last is not None:
            self._itl.observe(now - self.last)
        self.last = now

    def timings(self, result: Result) -> dict[str, Any]:
        now = time.perf_counter()
        first = self.first if self.first is not None else now
        return timings(result, (first - self.arrived) * 1000.0, (now - self.arrived) * 1000.0)

    def _end(self, result: Result | None = None) -> None:
        if not self.done:
            self.done = True
            if self.transcript is not None:
                self.transcript.close("finished" if result is not None else "failed or left")
            self.m.in_flight.labels(*self.labels).dec()
            self.m.e2e.labels(*self.labels).observe(time.perf_counter() - self.arrived)
            used = result if result is not None else self.result  # failed or left: what was counted
            if used is not None:
                self.context.charge(used.prompt_tokens + used.completion_tokens)

    def finished(self, result: Result, redelivered: str | None) -> None:
        labels = self.labels
        self.m.prompt_eval.labels(*labels).observe(result.prompt_ms / 1000.0)
        self.m.generation.labels(*labels).observe(result.predicted_ms / 1000.0)
        self.m.prompt_tokens.labels(*labels).inc(result.prompt_tokens)
        self.m.generation_tokens.labels(*labels).inc(result.completion_tokens)
        self.m.finish_reasons.labels(*labels, result.finish_reason).inc()
        if redelivered:
            self.m.redeliveries.labels(labels[0], redelivered).inc()
        marks = result.extra.get("trace")
        if marks and self.first is not None:
            self._stages(marks)
        self._end(result)

    def _stages(self, marks: dict[str, float]) -> None:
        """A traced request's TTFT, stage by stage, into the histogram and one log line."""
        arrived_wall = self.first_wall - (self.first - self.arrived) if self.first is not None else 0.0
        stages = breakdown(marks, arrived_wall, self.first_wall)
        if stages is None:
            return
        for stage, seconds in stages.items():
            self.m.ttft_stage.labels(self.labels[0], stage).observe(max(0.0, seconds))
        trace_log.info("ttft stages (ms) %s", json.dumps({k: round(v * 1000, 3) for k, v in stages.items()}))

    def failed(self, exc: SlmError) -> None:
        self.m.errors.labels(*self.labels, exc.metric_type).inc()
        if isinstance(exc, GenerationError) and exc.code == "worker_lost":
            self.m.redeliveries.labels(self.labels[0], "mid_stream").inc()
        self._end()

    def disconnected(self) -> None:
        if not self.done and not self.gone:
            self.gone = True
            self.m.disconnects.labels(*self.labels).inc()
            self.m.errors.labels(*self.labels, "cancelled").inc()
            self._end()


class MeasuredTracker(Tracker):
    """A local request's tracker that also teaches the router (its speeds, and its pending request)."""

    def __init__(self, metrics: Metrics, model: str, backend: str, arrived: float, context: RequestContext, *,
                 routing: Measurements, pending: Pending) -> None:
        super().__init__(metrics, model, backend, arrived, context)
        self.routing = routing
        self.pending = pending
        self.began = time.perf_counter()  # this attempt, after any candidate tried before it

    def finished(self, result: Result, redelivered: str | None) -> None:
        ttft = None if self.first is None else self.first - self.began
        self.routing.observe_local(self.labels[0], self.pending, ttft_s=ttft, queue_s=result.queue_ms / 1000.0,
                                   completion_tokens=result.completion_tokens,
                                   generation_s=result.predicted_ms / 1000.0)
        super().finished(result, redelivered)

    def _end(self, result: Result | None = None) -> None:
        self.routing.close(self.labels[0], self.pending)
        super()._end(result)
