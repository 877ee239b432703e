"""Which models to load, evict and unload: pure functions over what the supervisor observed.

- A model is *idle* when nothing is queued or running for it (its stream is empty and no worker
  is busy). Only ready, idle, unpinned models are ever stopped.
- `make_room`: to load a model of `need` bytes, the least recently used idle unpinned ready models
  are chosen, oldest use first, until what stays loaded plus `need` fits the budget (models already
  draining count as gone: nothing more is stopped for room they are about to free). `None` when
  even stopping every candidate would not make room (the request waits; it may time out).
- `idle_expired`: ready, idle, unpinned models whose last use is older than their `idle_unload_s`.
- `plan_boot`: which `load: boot` models start with `serve`: pinned ones first, then the others in
  registry order, each started when it fits beside those already started; the rest are deferred
  (unloaded: they load on their first request, making room as above).

Sizes are the decision bytes: the estimate (`residency.estimate`, known before loading), or a model's
measured peak RSS when that is larger (loading can peak above the steady size; the peak is what the
machine must hold). The steady RSS is only reported (it grows as the cache fills: deciding by it
would evict on a conversation's length).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One model as the policy sees it."""

    name: str
    cost: int  # estimated bytes of all its workers
    resident: bool  # a worker process exists (loading, ready or draining): its memory is taken
    ready: bool
    idle: bool
    pinned: bool
    last_used: float  # unix seconds; 0 when never used
    idle_unload_s: float | None = None
    draining: bool = False  # told to stop: its memory is freed once it exits


def in_use(models: Sequence[Candidate]) -> int:
    return sum(m.cost for m in models if m.resident)


def evictable(models: Sequence[Candidate]) -> list[Candidate]:
    """Ready, idle, unpinned models, least recently used first."""
    return sorted((m for m in models if m.ready and m.idle and not m.pinned), key=lambda m: (m.last_used, m.name))


def make_room(need: int, budget: int, models: Sequence[Candidate]) -> list[str] | None:
    """The models to stop (in order) so that `need` more bytes fit; `[]` when it fits already or will once
    the draining models have exited (the caller waits for them: `in_use` still counts them)."""
    used = in_use(models) - sum(m.cost for m in models if m.resident and m.draining)
    chosen: list[str] = []
    for model in evictable(models):
        if used + need <= budget:
            break
        chosen.append(model.name)
        used -= model.cost
    return chosen if used + need <= budget else None


def idle_expired(models: Sequence[Candidate], now: float) -> list[str]:
    return [m.name for m in models
            if m.ready and m.idle and not m.pinned and m.idle_unload_s is not None
            and now - m.last_used >= m.idle_unload_s]


@dataclass(frozen=True)
class BootModel:
    name: str
    cost: int
    pinned: bool


@dataclass(frozen=True)
class Deferred:
    cost: int
    committed: int  # bytes of the models started before it


@dataclass(frozen=True)
class BootPlan:
    start: list[str]
    deferred: dict[str, Deferred]


def plan_boot(models: Sequence[BootModel], budget: int) -> BootPlan:
    """Boot models (registry order) to start now and those left unloaded for want of room."""
    start: list[str] = []
    deferred: dict[str, Deferred] = {}
    committed = 0
    for model in [m for m in models if m.pinned] + [m for m in models if not m.pinned]:
        if committed + model.cost <= budget:
            start.append(model.name)
            committed += model.cost
        else:
            deferred[model.name] = Deferred(model.cost, committed)
    return BootPlan(start, deferred)
