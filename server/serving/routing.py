"""Spill-over routing: predict each target's time to first token (TTFT) and pick the first that meets
the router's objective. Pure functions over what the gateway measured; no I/O, no global state.

What is measured, per model (an exponentially weighted moving average, `ALPHA` per sample):
- `ttft`: local: arrival at the gateway to the first token, less the time spent queued (so: what a
  request that finds a free slot waits); hosted: arrival to the provider's first chunk;
- `per_token`: local: generation seconds per token of one sequence (the worker's own timings);
- `service`: local: seconds a request holds a slot (worker start to the end of its answer).

A local target's prediction simulates its slots (`parallel` x live workers). Each request this
gateway has in flight holds a slot for its *expected* time: the measured `ttft` plus `max_tokens` x
`per_token` when the client bounded the answer (the client's own bound is the best upper estimate
the gateway has), else the measured `service`; a running one has its age taken off. Requests queued
by other gateways (the queue's depth beyond our own) take `service` each, half of it when they may
already be running. Every request already queued goes before the new one (the queue is FIFO); the
new request's first token is predicted at the moment a slot frees for it plus `ttft`. Nothing
measured yet counts as zero: an idle, unmeasured target is predicted to meet any objective.

A hosted target is predicted at its measured `ttft` while it has a free concurrency slot (never
measured: assumed to meet the objective), and to miss when its slots are all taken, when it lacks its
key, or while its upstream circuit refuses requests (`server.backends.health`: open, or its trial in
flight; once the cool-down is over it is predicted as usual, so a router may send the trial).

A cold local target (no live worker, but one loads for a queued request: `load: on_demand`, or a
model the supervisor of `serve` unloaded) is predicted at its measured load time (process start to
first heartbeat, published by the supervisor; `COLD_LOAD_S` while never measured) plus its measured
`ttft`: a warm target meeting the objective is chosen while the cold one loads, and the gateway asks
the cold one to load (`slm:residency:wanted:{model}`) so that later requests find it ready.

`choose` takes the first target predicted at or under the objective, else the last target.
Escalation rules (`escalate` in the registry) are checked before any prediction.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from server.registry import EscalationRule

ALPHA = 0.3
CHARS_PER_TOKEN = 4  # the gateway does not tokenize; prompt lengths are estimated from characters
UNREACHABLE = math.inf
COLD_LOAD_S = 10.0  # a cold model's load time until one is measured: longer than any TTFT objective worth having

RouteReason = Literal["escalated", "objective", "last_target"]


@dataclass
class Ewma:
    alpha: float = ALPHA
    value: float | None = None

    def add(self, sample: float) -> None:
        sample = max(0.0, sample)
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


@dataclass
class Speed:
    """What this gateway measured of one model, in seconds."""

    ttft: Ewma = field(default_factory=Ewma)
    per_token: Ewma = field(default_factory=Ewma)
    service: Ewma = field(default_factory=Ewma)

    def expected_service(self, max_tokens: int | None) -> float:
        """How long a new request is expected to hold a slot."""
        if max_tokens is not None and self.per_token.value is not None:
            return (self.ttft.value or 0.0) + max_tokens * self.per_token.value
        return self.service.value or 0.0


@dataclass(eq=False)
class Pending:
    """One request of this gateway to a local model: queued until `started_at` is set."""

    expected_s: float
    started_at: float | None = None


@dataclass(frozen=True)
class LocalLoad:
    slots: int  # parallel x live workers; 0 = no worker (or no queue)
    depth: int  # requests queued or running in the model's stream, as last seen


def predict_local(load: LocalLoad, speed: Speed, pending: Sequence[Pending], now: float) -> float:
    """Predicted seconds from now to the first token of a new request to a local model."""
    if load.slots < 1:
        return UNREACHABLE
    service = speed.service.value or 0.0
    running = [p for p in pending if p.started_at is not None]
    free_at = [max(0.0, p.expected_s - (now - p.started_at)) for p in running if p.started_at is not None]
    ahead = [p.expected_s for p in pending if p.started_at is None]
    foreign = max(0, load.depth - len(pending))
    foreign_running = min(foreign, max(0, load.slots - len(free_at)))
    free_at += [service / 2.0] * foreign_running
    ahead += [service] * (foreign - foreign_running)
    free_at += [0.0] * max(0, load.slots - len(free_at))
    heapq.heapify(free_at)
    for took in ahead:
        heapq.heappush(free_at, heapq.heappop(free_at) + took)
    return free_at[0] + (speed.ttft.value or 0.0)


def predict_cold(load_s: float | None, speed: Speed) -> float:
    """Predicted seconds to the first token of a new request to a local model with no worker yet."""
    return (COLD_LOAD_S if load_s is None else load_s) + (speed.ttft.value or 0.0)


def predict_hosted(speed: Speed, *, has_free_slot: bool, can_serve: bool = True, reachable: bool = True) -> float:
    """Predicted seconds to the first chunk of a hosted model (its measured TTFT while it has room and its
    upstream is not known to be down)."""
    if not can_serve or not has_free_slot or not reachable:
        return UNREACHABLE
    return speed.ttft.value or 0.0


@dataclass(frozen=True)
class Traits:
    """What escalation rules look at in a request."""

    prompt_tokens: int
    tools: bool
    images: bool = False


def estimate_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def escalation(rules: Sequence[EscalationRule], traits: Traits) -> str | None:
    """The model named by the first rule whose every condition holds, or None."""
    for rule in rules:
        if rule.tools is not None and rule.tools != traits.tools:
            continue
        if rule.images is not None and rule.images != traits.images:
            continue
        if rule.prompt_tokens_over is not None and traits.prompt_tokens <= rule.prompt_tokens_over:
            continue
        return rule.to
    return None


@dataclass(frozen=True)
class Route:
    model: str
    reason: RouteReason
    predicted_s: float | None = None


def choose(targets: Sequence[str], predicted: Mapping[str, float], objective_s: float) -> Route:
    """The first target predicted to meet the objective, else the last target."""
    for target in targets:
        if predicted[target] <= objective_s:
            return Route(target, "objective", predicted[target])
    return Route(targets[-1], "last_target", predicted[targets[-1]])


class Measurements:
    """Per-model speeds and this gateway's pending local requests. One per `Service`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self._speeds: dict[str, Speed] = {}
        self._pending: dict[str, list[Pending]] = {}

    def speed(self, model: str) -> Speed:
        found = self._speeds.get(model)
        if found is None:
            found = self._speeds[model] = Speed()
        return found

    def pending(self, model: str) -> list[Pending]:
        return list(self._pending.get(model, ()))

    def open(self, model: str, max_tokens: int | None) -> Pending:
        item = Pending(self.speed(model).expected_service(max_tokens))
        self._pending.setdefault(model, []).append(item)
        return item

    def started(self, item: Pending) -> None:
        item.started_at = self.clock()

    def close(self, model: str, item: Pending) -> None:
        items = self._pending.get(model)
        if items is not None and item in items:
            items.remove(item)

    def observe_local(self, model: str, item: Pending, *, ttft_s: float | None, queue_s: float,
                      completion_tokens: int, generation_s: float) -> None:
        """A local request finished: learn its TTFT (less its queue wait), decode speed and slot time."""
        speed = self.speed(model)
        if ttft_s is not None:
            speed.ttft.add(ttft_s - queue_s)
        if completion_tokens > 0 and generation_s > 0:
            speed.per_token.add(generation_s / completion_tokens)
        if item.started_at is not None:
            speed.service.add(self.clock() - item.started_at)

    def observe_hosted(self, model: str, ttft_s: float) -> None:
        self.speed(model).ttft.add(ttft_s)

    def forget(self, model: str) -> None:
        """A model removed or changed by a reload starts unmeasured."""
        self._speeds.pop(model, None)
