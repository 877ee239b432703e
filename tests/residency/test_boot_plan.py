"""`serve` with three boot models under a budget that fits two: two start, the third stays unloaded
with its reason (a WARNING with the numbers, `deferred` in `/v1/status`) and loads on its first
request after an eviction; the measured peak appears in status. Pinned models that pass the budget
together stop `serve` before it starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from server.registry import parse_registry
from server.residency.manager import registry_costs
from tests.conftest import LiveServer, start_server, stop_server, wait_until

from .live import registry, worker_pids, write_models
from .random_gguf import Dims, write_random_gguf
from .test_live_residency import ask, budget_for_two, evictions


def shown(server: LiveServer) -> dict[str, dict[str, object]]:
    status = httpx.get(server.url + "/v1/status").json()
    return {m["name"]: m["residency"] for m in status["models"]}


def test_boot_models_past_the_budget_are_deferred_and_load_on_demand(tmp_path: Path) -> None:
    write_models(tmp_path)
    text = registry(load="boot")
    budget = budget_for_two(tmp_path, text)  # the two largest fit; m3 (largest) does not beside m1 and m2
    server = start_server(tmp_path, text, env={"SLM_MEMORY_BUDGET": str(budget)})
    try:
        def booted() -> bool:
            found = shown(server)
            return (found["m1"]["state"], found["m2"]["state"], found["m3"]["state"]) == ("ready", "ready", "unloaded")

        wait_until(booted, timeout_s=60, what="m1 and m2 ready, m3 unloaded in the gateway's status")
        assert sorted(worker_pids(server).values()) == ["m1", "m2"]
        found = shown(server)
        assert found["m3"]["deferred"] == "memory budget"
        assert found["m1"]["deferred"] is None
        line = re.search(r"WARNING.*m3: not loaded at boot \(memory budget\): needs an estimated .* \((\d+) bytes\); "
                         r"budget .* \((\d+) bytes\), .* \((\d+) bytes\) already committed", server.log())
        assert line is not None, server.log()
        cost, said_budget, committed = (int(g) for g in line.groups())
        assert said_budget == budget and cost == found["m3"]["memory_estimated_bytes"]
        assert committed == int(found["m1"]["memory_estimated_bytes"]) + int(found["m2"]["memory_estimated_bytes"])  # type: ignore[call-overload]
        # the measured peak (VmHWM, load included) is reported beside the steady RSS, and says which figure counts
        wait_until(lambda: bool(shown(server)["m1"]["memory_measured_peak_bytes"]), timeout_s=10,
                   what="m1's measured peak in status")
        m1 = shown(server)["m1"]
        assert int(m1["memory_measured_peak_bytes"]) >= int(m1["memory_measured_bytes"]) > 0  # type: ignore[call-overload]
        assert m1["memory_decision_bytes"] == max(m1["memory_estimated_bytes"], m1["memory_measured_peak_bytes"])  # type: ignore[type-var]
        assert m1["memory_decision_basis"] in ("estimate", "measured_peak")
        assert ask(server, "m3") == "m3"  # answered, after the least recently used idle model made room
        assert len(evictions(server)) == 1 and evictions(server)[0][1] == "budget"
        wait_until(lambda: shown(server)["m3"]["state"] == "ready", timeout_s=10, what="m3 ready in status")
        assert shown(server)["m3"]["deferred"] is None
    finally:
        stop_server(server)


def test_serve_refuses_pinned_models_that_together_pass_the_budget(tmp_path: Path) -> None:
    write_random_gguf(tmp_path / "m.gguf", Dims())
    entry = "    gguf: m.gguf\n    n_ctx: 256\n    parallel: 1\n    pinned: true\n"
    (tmp_path / "model_registry.yaml").write_text(f"models:\n  a:\n{entry}  b:\n{entry}")

    costs = registry_costs(parse_registry(yaml.safe_load((tmp_path / "model_registry.yaml").read_text())),
                           registry_dir=tmp_path, model_dirs=[])
    budget = costs["a"] + costs["b"] // 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_REGISTRY": str(tmp_path / "model_registry.yaml"), "SLM_MEMORY_BUDGET": str(budget),
                "SLM_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", "server", "serve"], env=env, cwd=tmp_path, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "pinned models a, b: together need an estimated" in err
    assert f"({costs['a'] + costs['b']} bytes" in err and f"({budget} bytes, SLM_MEMORY_BUDGET)" in err
