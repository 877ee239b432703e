"""The residency loop of `serve`: start `on_demand` models when a request for them is queued, make
room under the memory budget by draining the least recently used idle models, unload models idle
past `idle_unload_s`, and publish every model's residency to Redis for the gateways.

Demand is observed through Redis, so it works whatever gateway queued the request: a model whose
request stream (`slm:req:{model}`: queued + running) is not empty is wanted, and in use; so is one
whose `slm:residency:wanted:{model}` key a gateway set (a router sent a request to a warm target
instead of this cold one, and asks for it to be loaded for the next requests). Nothing
else is asked of the gateway. Each tick (`TICK_S`) reads, per local model, the stream's length and
its live workers' info (busy slots, RSS, pid), then decides (`policy`), then writes the residency
hash (expiring after `STATE_TTL_S`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis.asyncio
from redis.typing import EncodableT, FieldT

from server.errors import RegistryError
from server.queue import keys
from server.redis_connect import RedisTarget
from server.registry import Registry, resolve_gguf
from server.residency.budget import format_size
from server.residency.estimate import model_cost
from server.residency.policy import BootModel, BootPlan, Candidate, Deferred, idle_expired, in_use, make_room, plan_boot
from server.residency.state import BUDGET_FIELD, Budget, Residency, State

log = logging.getLogger("slm.residency")

TICK_S = 0.25
STATE_TTL_S = 5


class Workers(Protocol):
    """What the manager asks of the supervisor."""

    def pids(self, model: str) -> tuple[list[int], list[int]]:
        """(live processes serving, live processes told to stop) of a model."""
        ...

    def start_model(self, model: str) -> None: ...

    def stop_model(self, model: str) -> None: ...


@dataclass
class Seen:
    """What one tick read of a model."""

    depth: int = 0
    busy: int = 0
    wanted: bool = False  # a gateway's router passed over it while unloaded: load it
    ready_pids: set[int] = field(default_factory=set)
    rss: int = 0
    peak: int = 0  # its live workers' VmHWM, summed


def registry_costs(registry: Registry, *, registry_dir: Path, model_dirs: list[Path]) -> dict[str, int]:
    """Estimated bytes of every local model (all its replicas); `RegistryError` for an unreadable file."""
    costs = {}
    for name, entry in registry.local_models().items():
        path = resolve_gguf(entry.gguf, registry_dir=registry_dir, model_dirs=model_dirs)
        cost = model_cost(name, path, n_ctx=entry.n_ctx, parallel=entry.parallel, n_batch=entry.n_batch)
        costs[name] = cost.total * max(1, entry.replicas)
    return costs


def too_big(registry: Registry, costs: dict[str, int], budget: int) -> list[str]:
    """Problems naming each model that cannot fit the budget even alone."""
    return [f"models.{name}: needs an estimated {format_size(costs[name])} ({costs[name]} bytes: weights, KV cache "
            f"for n_ctx {entry.n_ctx} x parallel {entry.parallel} x replicas {entry.replicas}, compute buffers, "
            f"runtime), more than the whole memory budget of {format_size(budget)} ({budget} bytes, "
            "SLM_MEMORY_BUDGET)"
            for name, entry in registry.local_models().items() if costs.get(name, 0) > budget]


def pinned_too_big(registry: Registry, costs: dict[str, int], budget: int) -> list[str]:
    """A problem naming the pinned models when together they pass the budget (they are never evicted)."""
    pinned = {name: costs.get(name, 0) for name, entry in registry.local_models().items() if entry.pinned}
    total = sum(pinned.values())
    if len(pinned) < 2 or total <= budget:
        return []  # one pinned model too big alone is `too_big`'s
    named = ", ".join(f"{name} {format_size(cost)} ({cost} bytes)" for name, cost in pinned.items())
    return [f"pinned models {', '.join(pinned)}: together need an estimated {format_size(total)} ({total} bytes: "
            f"{named}), more than the memory budget of {format_size(budget)} ({budget} bytes, SLM_MEMORY_BUDGET); "
            "pinned models are never unloaded, so they must fit together"]


def boot_plan(registry: Registry, costs: dict[str, int], budget: int, only: set[str] | None = None) -> BootPlan:
    """Which `load: boot` models (of `only`, else all) start (pinned first, then registry order, while they fit)."""
    return plan_boot([BootModel(name, costs.get(name, 0), entry.pinned)
                      for name, entry in registry.local_models().items()
                      if not entry.on_demand and (only is None or name in only)], budget)


def log_deferred(plan: BootPlan, budget: int) -> None:
    for name, why in plan.deferred.items():
        log.warning("%s: not loaded at boot (memory budget): needs an estimated %s (%d bytes); budget %s (%d bytes), "
                    "%s (%d bytes) already committed to the models started before it; it loads on its first "
                    "request", name, format_size(why.cost), why.cost, format_size(budget), budget,
                    format_size(why.committed), why.committed)


class ResidencyManager:
    def __init__(self, registry: Registry, budget: int, costs: dict[str, int], workers: Workers,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.budget = budget
        self.costs = costs
        self.workers = workers
        self.clock = clock
        self.models: dict[str, Residency] = {}
        self._load_began: dict[str, float] = {}
        self._wanted_since: dict[str, float] = {}
        self._reset(registry)

    def _reset(self, registry: Registry) -> None:
        self.registry = registry
        kept = {}
        for name, entry in registry.local_models().items():
            was = self.models.get(name)
            same_file = was is not None and was.estimated_bytes == self.costs.get(name, 0)
            kept[name] = Residency(
                state=was.state if was else "unloaded", load=entry.load, pinned=entry.pinned,
                estimated_bytes=self.costs.get(name, 0), measured_bytes=was.measured_bytes if was else None,
                last_used=was.last_used if was else None, loads=was.loads if was else 0,
                last_load_s=was.last_load_s if was else None,
                evictions=dict(was.evictions) if was else Residency().evictions,
                measured_peak_bytes=was.measured_peak_bytes if was and same_file else None,
                deferred=was.deferred if was else None)
        self.models = kept

    def defer(self, plan: BootPlan) -> None:
        """Mark the boot models the plan left out (their workers start parked)."""
        for name in plan.deferred:
            if name in self.models:
                self.models[name].deferred = "memory budget"

    def plan_boot_models(self, names: set[str]) -> BootPlan:
        """Boot models to start (`serve`'s own at its start, or those a registry edit added): those that fit
        beside what is loaded or loading now start, the rest stay unloaded (deferred, with the WARNING of
        `log_deferred`) and load on their first request."""
        in_place = sum(res.decision_bytes() for name, res in self.models.items()
                       if name not in names and res.state != "unloaded")
        plan = boot_plan(self.registry, self.costs, self.budget - in_place, only=names)
        plan = BootPlan(plan.start, {name: Deferred(why.cost, why.committed + in_place)
                                     for name, why in plan.deferred.items()})
        self.defer(plan)
        log_deferred(plan, self.budget)
        return plan

    def began_loading(self, model: str) -> None:
        self._load_began[model] = self.clock()

    def apply_registry(self, registry: Registry, costs: dict[str, int]) -> None:
        self.costs = {**self.costs, **costs}
        self._reset(registry)

    # -- one tick ----------------------------------------------------------------------------------
    async def observe(self, client: redis.asyncio.Redis) -> dict[str, Seen]:
        models = list(self.models)
        pipe = client.pipeline(transaction=False)
        now = time.time()
        for model in models:
            pipe.xlen(keys.request_stream(model))
            pipe.zrangebyscore(keys.worker_heartbeats(model), now - 5, "+inf")
            pipe.exists(keys.residency_wanted(model))
            pipe.get(keys.fair_queue(model) + "waiting")  # the fair queue's jobs wait off the stream
        replies: list[Any] = await pipe.execute()
        seen = {m: Seen(depth=int(replies[4 * i]) + int(replies[4 * i + 3] or 0), wanted=bool(replies[4 * i + 2]))
                for i, m in enumerate(models)}
        infos = client.pipeline(transaction=False)
        owners: list[str] = []
        for i, model in enumerate(models):
            for worker_id in replies[4 * i + 1]:
                infos.hgetall(keys.worker_info(worker_id.decode() if isinstance(worker_id, bytes) else worker_id))
                owners.append(model)
        for model, info in zip(owners, await infos.execute(), strict=True):
            if not info:
                continue
            view = seen[model]
            view.busy += int(info.get(b"busy", 0) or 0)
            view.rss += int(info.get(b"rss", 0) or 0)
            view.peak += int(info.get(b"peak", 0) or 0)
            view.ready_pids.add(int(info.get(b"pid", 0) or 0))
        return seen

    def _state(self, model: str, seen: Seen) -> State:
        serving, stopping = self.workers.pids(model)
        if serving and any(pid in seen.ready_pids for pid in serving):
            return "ready"
        if serving:
            return "loading"
        return "draining" if stopping else "unloaded"

    def decide(self, seen: dict[str, Seen]) -> None:
        now = self.clock()
        for model, res in self.models.items():
            view = seen.get(model, Seen())
            state = self._state(model, view)
            if state == "ready" and res.state != "ready":
                res.last_used = now  # idle time counts from the load (a boot model's too), never from before it
                if model in self._load_began:
                    res.loads += 1
                    res.last_load_s = now - self._load_began.pop(model)
                    log.info("%s loaded in %.2f s", model, res.last_load_s)
            res.state = state
            if state != "unloaded":
                res.deferred = None
            res.measured_bytes = view.rss or None
            if view.peak > (res.measured_peak_bytes or 0):
                res.measured_peak_bytes = view.peak
            if view.depth > 0 or view.busy > 0 or (view.wanted and state != "ready"):
                res.last_used = now
        candidates = self._candidates(seen)
        for name in idle_expired(candidates, now):
            self._evict(name, "idle")
        self._load_wanted(seen)

    def _candidates(self, seen: dict[str, Seen]) -> list[Candidate]:
        out = []
        for name, res in self.models.items():
            entry = self.registry.local_models()[name]
            view = seen.get(name, Seen())
            out.append(Candidate(name=name, cost=res.decision_bytes(), resident=res.state != "unloaded",
                                 ready=res.state == "ready", idle=view.depth == 0 and view.busy == 0,
                                 pinned=entry.pinned, last_used=res.last_used or 0.0,
                                 idle_unload_s=entry.idle_unload_s, draining=res.state == "draining"))
        return out

    def _load_wanted(self, seen: dict[str, Seen]) -> None:
        now = self.clock()
        for name, res in self.models.items():
            view = seen.get(name, Seen())
            if res.state == "unloaded" and (view.depth > 0 or view.wanted):
                self._wanted_since.setdefault(name, now)
            else:
                self._wanted_since.pop(name, None)
        for name in sorted(self._wanted_since, key=lambda n: self._wanted_since[n]):
            candidates = self._candidates(seen)
            need = self.models[name].decision_bytes()
            evict = make_room(need, self.budget, candidates)
            if evict is None:
                continue  # no room yet (others busy or draining); the request waits
            if evict:
                for other in evict:
                    self._evict(other, "budget")
                continue  # load once they are gone
            if in_use(candidates) + need <= self.budget:
                log.info("%s wanted: loading (%s %s)", name, self.models[name].decision_basis().replace("_", " "),
                         format_size(need))
                self.models[name].state = "loading"
                self.began_loading(name)
                self.workers.start_model(name)
                del self._wanted_since[name]

    def _evict(self, name: str, reason: str) -> None:
        res = self.models[name]
        log.info("%s: unloading (%s; last used %.1f s ago)", name, reason, self.clock() - (res.last_used or 0.0))
        res.evictions[reason] = res.evictions.get(reason, 0) + 1
        res.state = "draining"
        self.workers.stop_model(name)

    async def publish(self, client: redis.asyncio.Redis) -> None:
        mapping: dict[FieldT, EncodableT] = {name: res.encode() for name, res in self.models.items()}
        mapping[BUDGET_FIELD] = Budget(
            self.budget, sum(r.estimated_bytes for r in self.models.values() if r.state != "unloaded"),
            sum(r.measured_bytes or 0 for r in self.models.values()),
            sum(r.decision_bytes() for r in self.models.values() if r.state != "unloaded")).encode()
        pipe = client.pipeline(transaction=True)
        pipe.delete(keys.residency())
        pipe.hset(keys.residency(), mapping=mapping)
        pipe.expire(keys.residency(), STATE_TTL_S)
        await pipe.execute()

    async def run(self, target: RedisTarget, stopping: Callable[[], bool]) -> None:
        client = target.async_client(socket_timeout=2.0, socket_connect_timeout=2.0)
        try:
            while not stopping():
                try:
                    self.decide(await self.observe(client))
                    await self.publish(client)
                except (redis.RedisError, OSError) as exc:
                    log.debug("residency tick failed: %s", exc)
                await asyncio.sleep(TICK_S)
        finally:
            await client.aclose()


def check_budget(registry: Registry, budget: int, *, registry_dir: Path, model_dirs: list[Path]) -> dict[str, int]:
    """The registry's costs, or `RegistryError` naming each model too big for the budget (and the pinned
    models, when together they are)."""
    costs = registry_costs(registry, registry_dir=registry_dir, model_dirs=model_dirs)
    problems = too_big(registry, costs, budget) + pinned_too_big(registry, costs, budget)
    if problems:
        raise RegistryError("\n".join(problems))
    return costs



def budget_problems(registry: Registry, budget: int, registry_dir: Path, model_dirs: list[Path]) -> list[str]:
    """`check_budget` for a registry reload: its problems as lines (empty when every model fits)."""
    try:
        check_budget(registry, budget, registry_dir=registry_dir, model_dirs=model_dirs)
    except RegistryError as exc:
        return str(exc).splitlines()
    return []
