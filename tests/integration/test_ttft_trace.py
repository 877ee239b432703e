"""SLM_TRACE_STAGES: a local request's time to first token, stage by stage, from both sides of the
queue; and every token of a stream reaches the client in a chunk of its own. SLM_TRACE_STEPS: the
worker's decode steps, phase by phase, on its /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from server.serving.stages import STAGES
from server.worker.step_timer import PHASES
from tests.conftest import LiveServer, free_port_block, start_server, stop_server, tiny_registry
from tests.prometheus_text import scrape, value

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("traced"), tiny_registry(n_ctx=512, n_threads=2, parallel=2),
                          env={"SLM_TRACE_STAGES": "true", "SLM_TRACE_STEPS": "true"}, worker_port=free_port_block(1))
    yield server
    stop_server(server)


def stream(url: str, prompt: str, max_tokens: int) -> tuple[int, int]:
    """(content chunks, completion tokens) of one streamed chat answer."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    chunks, tokens = 0, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            chunks += sum(1 for c in chunk["choices"] if c["delta"].get("content"))
    return chunks, tokens


def logged_stages(log: str) -> dict[str, float]:
    """The stages (seconds, as computed, before the histogram's clamp at 0) of the one traced log line."""
    lines = [line for line in log.splitlines() if "ttft stages (ms) " in line]
    assert len(lines) == 1, lines
    return {k: ms / 1000.0 for k, ms in json.loads(lines[0].split("ttft stages (ms) ", 1)[1]).items()}


def test_the_stages_of_a_traced_request_add_up_to_its_ttft(traced: LiveServer) -> None:
    stream(traced.url, "Count from 1 to 10.", 8)
    samples = scrape(traced.url)
    ttft = value(samples, "slm_time_to_first_token_seconds_sum", model="tiny", backend="local")
    counts = {s: value(samples, "slm_ttft_stage_seconds_count", model="tiny", stage=s) for s in STAGES}
    sums = {s: value(samples, "slm_ttft_stage_seconds_sum", model="tiny", stage=s) for s in STAGES}
    logged = logged_stages(traced.log())
    assert counts == dict.fromkeys(STAGES, 1.0) and list(logged) == list(STAGES)
    # consecutive marks: the stages add up to the TTFT the client saw (the log rounds each to 1 us)
    assert sum(logged.values()) == pytest.approx(ttft, abs=1e-5)
    # marks of two processes are in order: a worker never reads a job before the gateway handed it over, ...
    assert all(logged[s] >= 0 for s in STAGES if s != "gateway_in"), logged
    # ... only the arrival, placed on the wall clock from two clock reads, may land a little late
    assert all(v >= 0 for v in sums.values())
    assert sums == pytest.approx({s: max(0.0, v) for s, v in logged.items()}, abs=1e-5)
    assert sums["prefill"] > 0  # the model's own work is one of them


def test_every_token_reaches_the_client_in_its_own_chunk(traced: LiveServer) -> None:
    chunks, tokens = stream(traced.url, "Count from 1 to 20, separated by commas.", 24)
    assert tokens == 24
    assert chunks == tokens


def step_phases(worker_url: str) -> dict[str, tuple[float, float]]:
    """(count, sum) of each phase of the worker's step histogram."""
    samples = scrape(worker_url)
    return {phase: (value(samples, "slm_worker_step_seconds_count", model="tiny", phase=phase),
                    value(samples, "slm_worker_step_seconds_sum", model="tiny", phase=phase)) for phase in PHASES}


def test_a_traced_worker_times_each_step_of_a_request_phase_by_phase(traced: LiveServer) -> None:
    [worker] = traced.worker_urls
    stream(traced.url, "Say hi.", 2)  # a request before: the worker was busy, then idle, before this one
    before = step_phases(worker)
    _chunks, tokens = stream(traced.url, "Count from 1 to 20, separated by commas.", 16)
    after = step_phases(worker)
    counts = {phase: after[phase][0] - before[phase][0] for phase in PHASES}
    sums = {phase: after[phase][1] - before[phase][1] for phase in PHASES}
    # alone on the worker, the request took one step per token (the first with its prompt); the loop's time
    # between steps is timed from its second step on, never across the idle wait before it
    assert tokens == 16
    assert counts == {"step": 16, "emit": 16, "emit_cpu": 16, "between": 15}
    assert sums["step"] > sums["emit"] > 0
    assert sums["emit_cpu"] <= sums["emit"]  # the thread's own CPU fits inside the wall time it measured
