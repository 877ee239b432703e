"""What `/v1/status` reports: per registry model its state, queue depth, workers and recent latency.

State of a model:
- `draining`: the gateway is shutting down (it refuses new requests);
- `ready`: a local model with at least one live worker, a hosted model whose upstream is presumed
  reachable, or a router (no workers to wait for);
- `unreachable`: a hosted model whose upstream failed `FAILURES_TO_OPEN` times in a row: its circuit is
  open (requests fail at once with 503 `upstream_unavailable`) or its trial request is in flight
  (`server.backends.health`; passive: no probe is sent);
- `loading`: a local model with no live worker yet, while the gateway is young (workers load their
  GGUF after the gateway starts) and no worker of it has been seen since; or one the supervisor of
  `serve` is loading;
- `unloaded`: a local model whose workers are not running and load on its next request
  (`load: on_demand`, or unloaded by the supervisor: idle, or to make room under the memory budget);
  its requests wait for it;
- `unavailable`: otherwise (no worker, or Redis unreachable).

Recent latency is read from the gateway's own Prometheus series, not from a second bookkeeping:
Each local model also carries `residency` (null without a supervisor publishing it: `gateway` alone):
its residency state (`unloaded`, `loading`, `ready`, `draining`), `load`, `pinned`, memory estimated
from its GGUF and measured as its workers' RSS (bytes): now and at its peak (`VmHWM`, loading
included), the bytes fit decisions count for it (`memory_decision_bytes`: max of estimate and measured
peak) and which figure that is (`memory_decision_basis`: `estimate` or `measured_peak`), why a boot
model is unloaded (`deferred`: `memory budget` when the boot plan left it out), when it was last used
(unix seconds) and its last load time; the top level carries `memory` (the budget and what is in use:
estimated, measured, and committed in decision bytes).

`StatusReporter` keeps cumulative snapshots of them (one per `SNAPSHOT_EVERY_S` at most, taken
when the status is asked for) and reports over the difference between now and the newest snapshot
at least `WINDOW_S` old (the gateway's start while it is younger than that):
- `ttft_p50_ms`: the median time to first token, interpolated linearly inside the histogram
  bucket that holds it (so exact to within one bucket of `LATENCY_BUCKETS`);
- `tokens_per_s`: generated tokens / generation seconds of the requests finished in the window,
  a token-weighted mean of the per-request decode speed (the histograms hold no per-request rate,
  so no median of it can be read back);
- `window_s`: the span actually covered. With no one asking for the status for a while, the newest
  snapshot old enough may be older than `WINDOW_S`; the window then says so.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Metric

from server.registry import AnyEntry, HostedModel, LocalModel
from server.serving.service import Service

WINDOW_S = 300.0
SNAPSHOT_EVERY_S = 10.0
LOADING_GRACE_S = 300.0


@dataclass(frozen=True)
class _Series:
    """Cumulative numbers of one model at one moment."""

    ttft_buckets: tuple[tuple[float, float], ...] = ()  # (upper bound, cumulative count), ascending
    ttft_count: float = 0.0
    gen_seconds: float = 0.0
    gen_tokens: float = 0.0


@dataclass(frozen=True)
class _Snapshot:
    at: float  # the reporter's clock (time.monotonic)
    models: dict[str, _Series] = field(default_factory=dict)


def _by_model(metric: Metric, sample_name: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for sample in metric.samples:
        if sample.name == sample_name:
            out.setdefault(sample.labels["model"], []).append((sample.labels, sample.value))
    return out


def _take(service: Service, at: float) -> _Snapshot:
    m = service.metrics
    (ttft,) = m.ttft.collect()
    (gen,) = m.generation.collect()
    (tokens,) = m.generation_tokens.collect()
    buckets = _by_model(ttft, "slm_time_to_first_token_seconds_bucket")
    counts = _by_model(ttft, "slm_time_to_first_token_seconds_count")
    gen_sums = _by_model(gen, "slm_generation_seconds_sum")
    gen_tokens = _by_model(tokens, "slm_generation_tokens_total")
    models: dict[str, _Series] = {}
    for model in service.registry.models:
        edges: dict[float, float] = {}
        for labels, value in buckets.get(model, []):
            le = float(labels["le"])
            edges[le] = edges.get(le, 0.0) + value
        models[model] = _Series(
            ttft_buckets=tuple(sorted(edges.items())),
            ttft_count=sum(v for _, v in counts.get(model, [])),
            gen_seconds=sum(v for _, v in gen_sums.get(model, [])),
            gen_tokens=sum(v for _, v in gen_tokens.get(model, [])),
        )
    return _Snapshot(at, models)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile from cumulative `(upper bound, count)` pairs, ascending, +Inf last.

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0; a rank
    in the +Inf bucket answers the highest finite bound. `None` when there are no observations.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank and cumulative > below:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        if not math.isinf(upper):
            lower = upper
        below = cumulative
    return lower


def _recent(now: _Series, then: _Series | None) -> tuple[float | None, float | None, int]:
    """(TTFT p50 in seconds, tokens/s, requests with a first token) between two snapshots."""
    base = dict(then.ttft_buckets) if then is not None else {}
    diff = [(le, max(0.0, c - base.get(le, 0.0))) for le, c in now.ttft_buckets]
    ttft = histogram_quantile(0.5, diff)
    seconds = now.gen_seconds - (then.gen_seconds if then else 0.0)
    tokens = now.gen_tokens - (then.gen_tokens if then else 0.0)
    rate = tokens / seconds if seconds > 0 and tokens > 0 else None
    requests = round(now.ttft_count - (then.ttft_count if then else 0.0))
    return ttft, rate, requests


class StatusReporter:
    """Computes the status of one `Service`; keeps the snapshots that make latency 'recent'."""

    def __init__(self, service: Service, *, window_s: float = WINDOW_S, snapshot_every_s: float = SNAPSHOT_EVERY_S,
                 loading_grace_s: float = LOADING_GRACE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.window_s = window_s
        self.snapshot_every_s = snapshot_every_s
        self.loading_grace_s = loading_grace_s
        self.clock = clock
        started = clock() - max(0.0, time.time() - service.created)
        self._snapshots: deque[_Snapshot] = deque([_Snapshot(started)])  # all zero at the gateway's start
        self._seen_ready: set[str] = set()

    def _baseline(self, current: _Snapshot) -> _Snapshot:
        snaps = self._snapshots
        if current.at - snaps[-1].at >= self.snapshot_every_s:
            snaps.append(current)
        # keep exactly one snapshot at least `window_s` old: the baseline
        while len(snaps) > 1 and current.at - snaps[1].at >= self.window_s:
            snaps.popleft()
        return snaps[0]

    def _state(self, name: str, entry: AnyEntry, hosted: bool, workers: int, age_s: float) -> str:
        if self.service.draining:
            return "draining"
        if isinstance(entry, HostedModel) and not self.service.upstream_up(name, entry):
            return "unreachable"
        if hosted:
            return "ready"
        if workers >= 1:
            self._seen_ready.add(name)
            return "ready"
        managed = self.service.presence.residency.get(name)
        if managed is not None and managed.state != "ready":
            return "unloaded" if managed.state in ("unloaded", "draining") else "loading"
        if isinstance(entry, LocalModel) and entry.on_demand and self.service.presence.redis_ok:
            return "unloaded"
        if self.service.presence.redis_ok and name not in self._seen_ready and age_s < self.loading_grace_s:
            return "loading"
        return "unavailable"

    async def _queue_depths(self, local: list[str]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        """Per local model: jobs on its stream (running, or queued FIFO), and its fair queue's waiting
        jobs per priority class."""
        if not local or not self.service.presence.redis_ok:
            return {}, {}
        try:
            running = await self.service.queue.queue_depths(local)
            fair = await self.service.queue.fair_depths(local) if self.service.fairq.enabled else {}
        except Exception:  # Redis went away between two presence checks: depths unknown
            return {}, {}
        return running, {model: waiting for model, (waiting, _taken) in fair.items()}

    async def status(self) -> dict[str, Any]:
        service = self.service
        current = _take(service, self.clock())
        baseline = self._baseline(current)
        window = current.at - baseline.at
        local = list(service.registry.local_models())
        depths, waiting = await self._queue_depths(local)
        age_s = max(0.0, time.time() - service.created)
        models = []
        for name, entry in service.registry.models.items():
            hosted = not isinstance(entry, LocalModel)  # hosted or router: no workers of its own
            workers = 0 if hosted else service.presence.counts.get(name, 0)
            ttft, rate, requests = _recent(current.models[name], baseline.models.get(name))
            models.append({
                "name": name,
                "backend": entry.backend,
                "aliases": list(entry.aliases),
                "description": entry.description,
                "state": self._state(name, entry, hosted, workers, age_s),
                "workers": None if hosted else workers,
                "queue_depth": None if hosted or name not in depths else depths[name] + sum(
                    waiting.get(name, {}).values()),
                "residency": None if hosted or name not in service.presence.residency
                else service.presence.residency[name].public(),
                "queue": None if hosted or name not in depths else {
                    "policy": service.settings.queue_policy,
                    "on_stream": depths[name],  # running (and, FIFO, queued)
                    "waiting_by_priority": waiting.get(name, {}),
                    "drain_per_s": round(service.fairq.view.drain_per_s(name), 2),
                },
                "recent": {
                    "window_s": round(window, 1),
                    "requests": requests,
                    "ttft_p50_ms": None if ttft is None else round(ttft * 1000.0, 1),
                    "tokens_per_s": None if rate is None else round(rate, 1),
                },
            })
        return {
            "object": "status",
            "status": "draining" if service.draining else ("ok" if service.presence.redis_ok else "degraded"),
            "redis": service.presence.redis_ok,
            "uptime_s": round(age_s, 1),
            "memory": None if service.presence.budget is None else {
                "budget_bytes": service.presence.budget.budget_bytes,
                "estimated_in_use_bytes": service.presence.budget.estimated_in_use,
                "measured_in_use_bytes": service.presence.budget.measured_in_use,
                "committed_bytes": service.presence.budget.committed},
            "models": models,
        }


_reporters: weakref.WeakKeyDictionary[Service, StatusReporter] = weakref.WeakKeyDictionary()


def reporter_for(service: Service) -> StatusReporter:
    """The one reporter of a service (its snapshots live as long as the service)."""
    reporter = _reporters.get(service)
    if reporter is None:
        reporter = _reporters[service] = StatusReporter(service)
    return reporter
