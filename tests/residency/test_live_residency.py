"""`serve` under a memory budget that fits two of three models: real workers on random GGUFs, the
official OpenAI client, the supervisor's state read from Redis and the workers' RSS from /proc."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import openai

from server.registry import parse_registry
from server.residency.manager import registry_costs
from tests.conftest import LiveServer, start_server, stop_server, wait_until

from .live import Sampler, registry, residency, running, worker_pids, write_models


def budget_for_two(tmp: Path, text: str) -> int:
    import yaml

    costs = registry_costs(parse_registry(yaml.safe_load(text)), registry_dir=tmp, model_dirs=[])
    largest = sorted(costs.values())[-2:]
    budget = sum(largest) + 1024 * 1024
    assert budget < sum(costs.values()), "the budget must not fit all three"
    return budget


def ask(server: LiveServer, model: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert reply.choices[0].finish_reason in ("stop", "length")
    return reply.model


def evictions(server: LiveServer) -> list[tuple[str, str]]:
    """(model, reason) of each unload, in order, from the supervisor's log."""
    return re.findall(r"(m\d): unloading \((budget|idle);", server.log())


def test_three_models_cycling_under_a_budget_for_two(tmp_path: Path) -> None:
    write_models(tmp_path)
    text = registry()
    budget = budget_for_two(tmp_path, text)
    server = start_server(tmp_path, text, env={"SLM_MEMORY_BUDGET": str(budget)})
    try:
        assert worker_pids(server) == {}, "on-demand models load on their first request, not at boot"
        with Sampler(server) as sampler:
            served = [ask(server, model) for model in ("m1", "m2", "m3", "m1", "m2")]
        assert served == ["m1", "m2", "m3", "m1", "m2"]  # every request answered, by the model asked
        # loading m3 evicts m1 (least recently used), then m1 evicts m2, then m2 evicts m3
        assert evictions(server) == [("m1", "budget"), ("m2", "budget"), ("m3", "budget")]
        assert sampler.samples > 20
        assert sampler.max_resident == 2, sampler.states
        assert sampler.max_processes == 2
        assert 0 < sampler.max_rss_sum <= budget, (sampler.max_rss_sum, budget)
        # the last answer may come before the supervisor's next tick has seen m2's heartbeat
        final = {"m1": "ready", "m2": "ready", "m3": "unloaded"}
        wait_until(lambda: {n: residency(server)[n]["state"] for n in final} == final, timeout_s=10,
                   what="the supervisor to publish m1 and m2 ready, m3 unloaded")
        state = residency(server)
        assert state["m1"]["evictions"] == {"budget": 1, "idle": 0}
        assert all(isinstance(state[n]["last_load_s"], float) for n in ("m1", "m2", "m3"))
        for name in ("m1", "m2"):  # measured RSS reported with the heartbeat, under its estimate
            assert 0 < int(state[name]["measured_bytes"]) <= int(state[name]["estimated_bytes"])  # type: ignore[call-overload]
    finally:
        stop_server(server)


def test_a_pinned_model_stays_and_an_idle_one_unloads(tmp_path: Path) -> None:
    write_models(tmp_path)
    text = registry({"m1": "    pinned: true\n", "m3": "    idle_unload_s: 1.5\n"})
    budget = budget_for_two(tmp_path, text)
    server = start_server(tmp_path, text, env={"SLM_MEMORY_BUDGET": str(budget)})
    try:
        with Sampler(server) as sampler:
            for model in ("m1", "m2", "m3"):
                ask(server, model)
            # m1 was used least recently but is pinned: m2 made room for m3
            assert evictions(server) == [("m2", "budget")]
            m3_pid = next(pid for pid, model in worker_pids(server).items() if model == "m3")
            wait_until(lambda: not running(m3_pid), timeout_s=30, what="m3's worker to exit after 1.5 s idle")
            # the supervisor publishes what it saw at its next tick (every 0.25 s)
            wait_until(lambda: residency(server)["m3"]["state"] == "unloaded", timeout_s=10,
                       what="the supervisor to publish m3 unloaded")
        assert evictions(server) == [("m2", "budget"), ("m3", "idle")]
        assert sampler.max_resident == 2 and sampler.max_processes == 2
        first_ready = next(i for i, state in enumerate(sampler.states) if state.get("m1") == "ready")
        assert all(state.get("m1") == "ready" for state in sampler.states[first_ready:]), sampler.states
        assert residency(server)["m1"]["state"] == "ready"
        assert set(worker_pids(server).values()) == {"m1"}
        check_shown(server, budget)
        ask(server, "m3")  # an unloaded model loads again for its next request
    finally:
        stop_server(server)


def check_shown(server: LiveServer, budget: int) -> None:
    """m1 ready (pinned), m2 unloaded: as /v1/status, /v1/models and /metrics show it."""
    def settled() -> bool:  # the gateway refreshes what the supervisor published every presence interval
        status = httpx.get(server.url + "/v1/status").json()
        by_name = {m["name"]: m["residency"] for m in status["models"]}
        return bool(by_name["m1"]["memory_measured_bytes"]) and by_name["m3"]["state"] == "unloaded"

    wait_until(settled, timeout_s=10, what="m1's measured memory and m3 unloaded in the gateway's status")
    status = httpx.get(server.url + "/v1/status").json()
    by_name = {m["name"]: m for m in status["models"]}
    assert by_name["m1"]["state"] == "ready" and by_name["m2"]["state"] == "unloaded"
    m1 = by_name["m1"]["residency"]
    assert m1["state"] == "ready" and m1["pinned"] is True and m1["load"] == "on_demand"
    assert m1["memory_estimated_bytes"] > 0 and m1["last_used"] > 0 and m1["last_load_s"] > 0
    assert by_name["m2"]["residency"]["state"] == "unloaded"
    assert status["memory"]["budget_bytes"] == budget
    assert status["memory"]["estimated_in_use_bytes"] == m1["memory_estimated_bytes"]
    models = openai.OpenAI(base_url=server.url + "/v1", api_key="x").models.list()
    cards = {m.id: m.model_extra for m in models.data}
    assert cards["m1"]["x_slm_residency"]["state"] == "ready"  # type: ignore[index]
    assert cards["m3"]["x_slm_residency"]["state"] == "unloaded"  # type: ignore[index]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'slm_model_loaded{model="m1"} 1.0' in metrics
    assert 'slm_model_loaded{model="m2"} 0.0' in metrics
    assert re.search(r'slm_model_memory_bytes\{kind="estimated",model="m1"\} [1-9]', metrics)
    assert re.search(r'slm_model_memory_bytes\{kind="measured",model="m1"\} [1-9]', metrics)
    assert 'slm_model_evictions_total{model="m3",reason="idle"} 1.0' in metrics
    assert 'slm_model_evictions_total{model="m1",reason="budget"} 0.0' in metrics
