"""A router whose preferred target is unloaded: the warm target serves while the cold one loads (the
gateway asks for it), and once it is ready the router's requests go to it."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import start_server, stop_server, wait_until

from .live import residency, worker_pids, write_models

REGISTRY = """
models:
  warm:
    gguf: m1.gguf
    n_ctx: 256
    n_threads: 1
    parallel: 2
  cold:
    gguf: m2.gguf
    n_ctx: 256
    n_threads: 1
    parallel: 2
    load: on_demand
  auto:
    backend: router
    targets: [cold, warm]
    ttft_objective_s: 3
"""
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_router_serves_from_the_warm_target_while_the_cold_one_loads(tmp_path: Path) -> None:
    write_models(tmp_path)
    server = start_server(tmp_path, REGISTRY)
    try:
        assert set(worker_pids(server).values()) == {"warm"}
        first = httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=60)
        assert first.status_code == 200, first.text
        # cold is predicted at its load time (never measured: 10 s) > 3 s: warm serves, at once
        assert first.headers["x-slm-model"] == "warm" and first.headers["x-slm-route"] == "objective"
        wait_until(lambda: residency(server)["cold"]["state"] in ("loading", "ready"), timeout_s=10,
                   what="the gateway to ask for the cold target and the supervisor to start it")
        while residency(server)["cold"]["state"] == "loading":  # requests meanwhile: still the warm one
            during = httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=60)
            assert during.status_code == 200, during.text
            # the cold one may have become ready between the state read and this request: only then is it chosen
            # (the gateway routes on the worker it saw beat; the supervisor publishes `ready` at its next tick)
            assert during.headers["x-slm-model"] == "warm" or residency(server)["cold"]["state"] == "ready" \
                or httpx.get(server.url + "/v1/status").json()["models"][1]["workers"] == 1
        wait_until(lambda: httpx.get(server.url + "/v1/status").json()["models"][1]["workers"] == 1, timeout_s=60,
                   what="the cold target's worker in the gateway's presence")
        assert isinstance(residency(server)["cold"]["last_load_s"], float)
        later = httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=60)
        assert later.status_code == 200 and later.headers["x-slm-model"] == "cold"  # loaded: the preferred target
    finally:
        stop_server(server)
