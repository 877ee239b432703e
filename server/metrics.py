"""Every Prometheus metric of the gateway, on a registry the app owns (no global state).

Labels are `model` and `backend` (plus a bounded enum here and there); never users, keys or
request ids. Buckets put edges exactly on 0.1 / 0.5 / 1 / 2 s so objectives read exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from server.residency.state import EVICTION_REASONS, Residency

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0,
    3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
)
ITL_BUCKETS = (
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
)
ERROR_TYPES = (
    "overloaded", "validation", "timeout", "worker_lost", "upstream", "cancelled", "unavailable", "internal",
)
FINISH_REASONS = ("stop", "length")
REDELIVERY_PHASES = ("before_first_token", "mid_stream")
ML = ("model", "backend")
ROUTE_REASONS = ("objective", "last_target", "escalated")
# Why a request passed to the next candidate: the metric type of each error that may fall through
# (`serving/dispatch.falls_through`: a 429, 500, 502, 503 or 504, or a 400 of a model the server picked).
FALLBACK_REASONS = (
    "unavailable", "overloaded", "rate_limited", "timeout", "upstream", "worker_lost", "internal", "validation",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("slm_requests", "Requests by final HTTP status.",
                                [*ML, "endpoint", "stream", "code"], registry=r)
        self.errors = Counter("slm_request_errors", "Failed requests by cause.", [*ML, "error_type"], registry=r)
        self.ttft = Histogram("slm_time_to_first_token_seconds", "Arrival at the gateway to first token.",
                              ML, buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("slm_inter_token_latency_seconds", "Time between tokens reaching the gateway.",
                             ML, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("slm_e2e_request_latency_seconds", "Arrival to last byte.",
                             ML, buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("slm_request_queue_time_seconds", "Enqueue to a worker starting it.",
                                    ML, buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_eval = Histogram("slm_prompt_eval_seconds", "Prompt evaluation time, from the worker.",
                                     ML, buckets=LATENCY_BUCKETS, registry=r)
        self.generation = Histogram("slm_generation_seconds", "Generation time, from the worker.",
                                    ML, buckets=LATENCY_BUCKETS, registry=r)
        self.ttft_stage = Histogram("slm_ttft_stage_seconds", "Where the time to first token went, stage by stage "
                                    "(local models, only with SLM_TRACE_STAGES=true; server/serving/stages.py).",
                                    ["model", "stage"], buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("slm_prompt_tokens", "Prompt tokens processed.", ML, registry=r)
        self.generation_tokens = Counter("slm_generation_tokens", "Tokens generated.", ML, registry=r)
        self.finish_reasons = Counter("slm_finish_reasons", "Completions by finish reason.",
                                      [*ML, "reason"], registry=r)
        self.in_flight = Gauge("slm_requests_in_flight", "Requests being served.", ML, registry=r)
        self.queue_depth = Gauge("slm_queue_depth", "Requests queued or running per local model.",
                                 ["model"], registry=r)
        self.queue_waiting = Gauge("slm_queue_waiting", "Requests waiting in a local model's fair queue, per "
                                   "priority class (never per key).", ["model", "priority"], registry=r)
        self.queue_wait = Histogram("slm_queue_wait_seconds", "Enqueue to a worker starting it, per priority class.",
                                    ["model", "priority"], buckets=LATENCY_BUCKETS, registry=r)
        self.workers_ready = Gauge("slm_workers_ready", "Workers with a fresh heartbeat.", ["model"], registry=r)
        self.disconnects = Counter("slm_client_disconnects", "Clients that left before the end.", ML, registry=r)
        self.redeliveries = Counter("slm_redeliveries", "Requests taken over by another worker.",
                                    ["model", "phase"], registry=r)
        self.registry_reloads = Counter("slm_registry_reloads", "Registry reloads by result.", ["result"],
                                        registry=r)
        self.model_info = Gauge("slm_model_info", "Served models (value 1).",
                                ["model", "backend", "file", "quant", "n_ctx"], registry=r)
        self.upstream_latency = Histogram("slm_upstream_latency_seconds", "Hosted provider call latency.",
                                          ["model", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("slm_upstream_errors", "Hosted provider errors.",
                                       ["model", "provider", "code"], registry=r)
        self.fallbacks = Counter("slm_fallbacks", "Requests passed from a model that could not serve to the next one.",
                                 ["model", "to", "reason"], registry=r)
        self.router_decisions = Counter("slm_router_decisions", "Where each router sent its requests, and why.",
                                        ["router", "model", "reason"], registry=r)
        for result in ("success", "failure"):
            self.registry_reloads.labels(result)
        # residency (server/residency), as the supervisor of `serve` publishes it
        self.model_loaded = Gauge("slm_model_loaded", "A local model's workers are loaded and ready (1) or not (0).",
                                  ["model"], registry=r)
        self.model_memory = Gauge("slm_model_memory_bytes", "A local model's memory: `estimated` from its GGUF "
                                  "before loading, `measured` as its workers' RSS, `measured_peak` as their peak RSS "
                                  "(loading included), `decision` what fit decisions count (max of estimate and peak).",
                                  ["model", "kind"], registry=r)
        self.model_evictions = Counter("slm_model_evictions", "Local models unloaded: to make room under the "
                                       "memory budget (`budget`) or for being idle (`idle`).", ["model", "reason"],
                                       registry=r)
        self._evictions_seen: dict[tuple[str, str], int] = {}
        self.upstream_up = Gauge("slm_upstream_up", "A hosted model's upstream: 1 reachable, 0 circuit open "
                                 "(requests fail at once; server/backends/health.py).", ["model"], registry=r)

    def declare_model(self, model: str, backend: str, *, file: str, quant: str, n_ctx: int | None) -> None:
        """Create a model's series at zero so dashboards show it before its first request."""
        self.model_info.labels(model, backend, file, quant, str(n_ctx or "")).set(1)
        for error_type in ERROR_TYPES:
            self.errors.labels(model, backend, error_type)
        for reason in FINISH_REASONS:
            self.finish_reasons.labels(model, backend, reason)
        self.disconnects.labels(model, backend)
        self.in_flight.labels(model, backend)
        self.prompt_tokens.labels(model, backend)
        self.generation_tokens.labels(model, backend)
        if backend == "hosted" and (model,) not in self.upstream_up._metrics:
            self.upstream_up.labels(model).set(1)  # presumed reachable until its circuit opens (kept across reloads)
        if backend == "local":
            for phase in REDELIVERY_PHASES:
                self.redeliveries.labels(model, phase)
            self.queue_depth.labels(model)
            self.workers_ready.labels(model)
            self.model_loaded.labels(model)
            for kind in ("estimated", "measured", "measured_peak", "decision"):
                self.model_memory.labels(model, kind)
            for reason in EVICTION_REASONS:
                self.model_evictions.labels(model, reason)

    def observe_residency(self, models: Mapping[str, Residency]) -> None:
        """Set the residency gauges; count the evictions published since the last call."""
        for model, res in models.items():
            self.model_loaded.labels(model).set(1 if res.state == "ready" else 0)
            self.model_memory.labels(model, "estimated").set(res.estimated_bytes)
            self.model_memory.labels(model, "measured").set(res.measured_bytes or 0)
            self.model_memory.labels(model, "measured_peak").set(res.measured_peak_bytes or 0)
            self.model_memory.labels(model, "decision").set(res.decision_bytes())
            for reason in EVICTION_REASONS:
                total = res.evictions.get(reason, 0)
                seen = self._evictions_seen.get((model, reason), 0)
                if total > seen:
                    self.model_evictions.labels(model, reason).inc(total - seen)
                self._evictions_seen[(model, reason)] = total

    def declare_router(self, router: str, targets: list[str]) -> None:
        """A router serves nothing itself: it is listed, and its decisions per target start at zero."""
        self.model_info.labels(router, "router", "", "", "").set(1)
        for target in targets:
            for reason in ROUTE_REASONS:
                self.router_decisions.labels(router, target, reason)

    def declare_fallbacks(self, edges: Iterable[tuple[str, str]]) -> None:
        """Every hop a request can take from one model to the next, each reason at zero. Hops declared
        before and no longer possible (a reload changed the plans) are dropped."""
        wanted = set(edges)
        for labels in list(self.fallbacks._metrics):
            if labels[:2] not in wanted:
                self.fallbacks.remove(*labels)
        for model, to in sorted(wanted):
            for reason in FALLBACK_REASONS:
                self.fallbacks.labels(model, to, reason)

    def forget_model(self, model: str) -> None:
        """Drop a removed (or changed) model's info, its fallback hops from and to it, and its router
        decisions as a router or as a target; `declare_*` puts back what the new registry still has."""
        for gauge in (self.model_info, self.upstream_up, self.model_loaded, self.model_memory):
            for labels in list(gauge._metrics):
                if labels[0] == model:
                    gauge.remove(*labels)
        for counter in (self.fallbacks, self.router_decisions):
            for labels in list(counter._metrics):
                if model in labels[:2]:
                    counter.remove(*labels)
