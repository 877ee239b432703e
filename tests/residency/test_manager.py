"""The residency manager's decisions from what a tick saw (the supervisor's processes recorded, no
Redis): the boot plan under the budget, and fit decisions that use a model's measured peak once it is
larger than its estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from server.registry import Registry, parse_registry
from server.residency.manager import ResidencyManager, Seen, boot_plan, pinned_too_big
from server.residency.policy import BootModel, Deferred, plan_boot

MIB = 1024**2


@dataclass
class Processes:
    """The supervisor as the manager sees it: pids serving and stopping per model, and what it was told."""

    serving: dict[str, list[int]] = field(default_factory=dict)
    stopping: dict[str, list[int]] = field(default_factory=dict)
    told: list[tuple[str, str]] = field(default_factory=list)
    next_pid: int = 100

    def pids(self, model: str) -> tuple[list[int], list[int]]:
        return self.serving.get(model, []), self.stopping.get(model, [])

    def start_model(self, model: str) -> None:
        self.told.append(("start", model))
        self.next_pid += 1
        self.serving[model] = [self.next_pid]

    def stop_model(self, model: str) -> None:
        self.told.append(("stop", model))
        self.stopping[model] = self.serving.pop(model, [])


def two_models(**extra: dict[str, object]) -> Registry:
    return parse_registry({"models": {name: {"gguf": f"{name}.gguf", **extra.get(name, {})} for name in ("a", "b")}})


def test_boot_plan_starts_pinned_first_then_registry_order_while_they_fit() -> None:
    models = [BootModel("big", 60 * MIB, False), BootModel("mid", 50 * MIB, False),
              BootModel("pin", 30 * MIB, True), BootModel("small", 10 * MIB, False)]
    plan = plan_boot(models, 100 * MIB)
    assert plan.start == ["pin", "big", "small"]  # mid does not fit beside pin and big; small still does
    assert plan.deferred == {"mid": Deferred(cost=50 * MIB, committed=90 * MIB)}


def test_boot_plan_leaves_on_demand_models_out() -> None:
    registry = two_models(b={"load": "on_demand"})
    plan = boot_plan(registry, {"a": 60 * MIB, "b": 60 * MIB}, 100 * MIB)
    assert plan.start == ["a"] and plan.deferred == {}


def test_a_deferred_boot_model_says_why_until_it_loads() -> None:
    registry = two_models()
    procs = Processes()
    manager = ResidencyManager(registry, 100 * MIB, {"a": 60 * MIB, "b": 60 * MIB}, procs)
    plan = boot_plan(registry, manager.costs, manager.budget)
    assert plan.start == ["a"] and list(plan.deferred) == ["b"]
    manager.defer(plan)
    procs.start_model("a")
    settle(manager, procs, {"a": Seen(), "b": Seen()})
    assert manager.models["b"].public()["deferred"] == "memory budget"
    assert manager.models["b"].state == "unloaded"
    settle(manager, procs, {"a": Seen(), "b": Seen(depth=1)})  # asked for: a makes room, then b loads
    procs.stopping.clear()
    settle(manager, procs, {"a": Seen(), "b": Seen(depth=1)})
    assert procs.told == [("start", "a"), ("stop", "a"), ("start", "b")]
    settle(manager, procs, {"a": Seen(), "b": Seen(depth=1)})
    assert manager.models["b"].state == "ready" and manager.models["b"].deferred is None


def test_pinned_models_that_together_pass_the_budget_are_a_registry_error() -> None:
    registry = two_models(a={"pinned": True}, b={"pinned": True, "load": "on_demand"})
    problems = pinned_too_big(registry, {"a": 60 * MIB, "b": 50 * MIB}, 100 * MIB)
    assert len(problems) == 1
    assert "pinned models a, b" in problems[0] and f"({110 * MIB} bytes" in problems[0]
    assert f"({100 * MIB} bytes, SLM_MEMORY_BUDGET)" in problems[0]
    assert pinned_too_big(registry, {"a": 50 * MIB, "b": 50 * MIB}, 100 * MIB) == []


def settle(manager: ResidencyManager, procs: Processes, seen: dict[str, Seen]) -> None:
    views = {}
    for name, view in seen.items():
        view.ready_pids = set(procs.serving.get(name, []))
        views[name] = view
    manager.decide(views)


@pytest.mark.parametrize(("peak", "evicts"), [(None, False), (180 * MIB, True)])
def test_a_measured_peak_above_the_estimate_makes_room_where_the_estimate_would_not(
        peak: int | None, evicts: bool) -> None:
    registry = two_models(b={"load": "on_demand"})
    procs = Processes()
    now = [1000.0]
    manager = ResidencyManager(registry, 250 * MIB, {"a": 100 * MIB, "b": 100 * MIB}, procs, clock=lambda: now[0])
    procs.start_model("a")  # a boot model, started by the supervisor
    settle(manager, procs, {"a": Seen(rss=90 * MIB, peak=peak or 0), "b": Seen()})
    a = manager.models["a"]
    assert a.state == "ready" and a.measured_peak_bytes == (peak or None)
    assert a.decision_bytes() == (peak or 100 * MIB)
    assert a.public()["memory_decision_basis"] == ("measured_peak" if peak else "estimate")
    now[0] += 5
    settle(manager, procs, {"a": Seen(rss=90 * MIB, peak=peak or 0), "b": Seen(depth=1)})  # a request for b
    if evicts:  # 180 + 100 > 250: a (idle, least recently used) drains first; b loads once it is gone
        assert procs.told[-1] == ("stop", "a") and ("start", "b") not in procs.told
        assert manager.models["a"].evictions["budget"] == 1
        procs.stopping.clear()
        settle(manager, procs, {"a": Seen(), "b": Seen(depth=1)})
        assert manager.models["a"].state == "unloaded"
        assert manager.models["a"].measured_peak_bytes == peak, "the measured peak outlives the process"
    assert procs.told[-1] == ("start", "b")
    assert ("stop", "a") in procs.told if evicts else ("stop", "a") not in procs.told


def test_boot_models_a_registry_edit_adds_start_only_while_they_fit_beside_the_loaded_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    procs = Processes()
    manager = ResidencyManager(two_models(), 100 * MIB, {"a": 40 * MIB, "b": 30 * MIB}, procs)
    procs.start_model("a")
    procs.start_model("b")
    settle(manager, procs, {"a": Seen(), "b": Seen()})
    edited = parse_registry({"models": {name: {"gguf": f"{name}.gguf"} for name in ("a", "b", "c", "d")}})
    manager.apply_registry(edited, {"c": 20 * MIB, "d": 20 * MIB})
    with caplog.at_level("WARNING", logger="slm.residency"):
        plan = manager.plan_boot_models({"c", "d"})
    assert plan.start == ["c"]  # 70 MiB loaded + c's 20 fit in 100; d's 20 more would not
    assert plan.deferred == {"d": Deferred(cost=20 * MIB, committed=90 * MIB)}
    assert manager.models["d"].public()["deferred"] == "memory budget"
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["d"]
    assert f"({90 * MIB} bytes) already committed" in caplog.records[0].getMessage()
