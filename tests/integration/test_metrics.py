"""After a known number of requests the counters are exact and every histogram counted them."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from tests.prometheus_text import scrape, value

pytestmark = pytest.mark.integration

LABELS = {"model": "smollm2", "backend": "local"}


def test_counters_and_histograms_are_exact(live_server: LiveServer) -> None:
    before = scrape(live_server.url)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 5,
            "temperature": 0}
    tokens = 0
    for _ in range(3):
        reply = httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=60).json()
        tokens += reply["usage"]["completion_tokens"]
    with httpx.stream("POST", live_server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as response:
        for line in response.iter_lines():
            if '"usage"' in line and '"choices":[]' in line:
                break
    bad = httpx.post(live_server.url + "/v1/chat/completions", json={**body, "temperature": 9}, timeout=10)
    assert bad.status_code == 400
    after = scrape(live_server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("slm_requests_total", **LABELS, endpoint="chat", stream="false", code="200") == 3
    assert delta("slm_requests_total", **LABELS, endpoint="chat", stream="true", code="200") == 1
    assert delta("slm_requests_total", **LABELS, endpoint="chat", stream="false", code="400") == 1
    for histogram in ("slm_time_to_first_token_seconds", "slm_e2e_request_latency_seconds",
                      "slm_request_queue_time_seconds", "slm_prompt_eval_seconds", "slm_generation_seconds"):
        assert delta(histogram + "_count", **LABELS) == 4, histogram
        assert delta(histogram + "_bucket", **LABELS, le="+Inf") == 4, histogram
    assert delta("slm_finish_reasons_total", **LABELS, reason="length") + \
        delta("slm_finish_reasons_total", **LABELS, reason="stop") == 4
    assert delta("slm_generation_tokens_total", **LABELS) >= tokens
    assert value(after, "slm_requests_in_flight", **LABELS) == 0


def test_gauges_return_to_zero_after_aborted_requests(live_server: LiveServer) -> None:
    before = scrape(live_server.url)
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 300, "stream": True}
    for _ in range(2):
        with httpx.stream("POST", live_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if '"content"' in line:
                    break

    def settled() -> bool:
        now = scrape(live_server.url)
        return (value(now, "slm_requests_in_flight", **LABELS) == 0
                and value(now, "slm_queue_depth", model="smollm2") == 0
                and value(now, "slm_client_disconnects_total", **LABELS)
                - value(before, "slm_client_disconnects_total", **LABELS) == 2)

    wait_until(settled, timeout_s=20, what="in-flight and queue gauges back to 0 after two aborted streams",
               interval_s=0.2)
