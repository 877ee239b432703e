"""Admission on a real server: a full queue answers 429 at once, a request past its deadline 503."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from server.queue import keys
from tests.conftest import SMOLLM2, LiveServer, start_server, stop_server, wait_until
from tests.openapi import assert_valid
from tests.pace import tokens_lasting

pytestmark = pytest.mark.integration

REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 1024
    n_threads: 2
    parallel: 1
    max_queue: 2
"""
LONG = {"model": "tiny", "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 400, "temperature": 0, "stream": True}
QUEUE_TIMEOUT_S = 1.5
HOLD_S = 8 * QUEUE_TIMEOUT_S  # how long the running stream should hold the one slot: well past a queued deadline


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("admission"), REGISTRY,
                          env={"SLM_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S)})
    yield server
    stop_server(server)


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def queued_or_running(r: redis.Redis, model: str) -> int:
    """What `max_queue` bounds: the jobs on the model's stream (running) and in its fair queue (waiting)."""
    return int(r.xlen(keys.request_stream(model))) + int(r.get(keys.fair_queue(model) + "waiting") or 0)


def start_stream(url: str, body: dict[str, object], started: threading.Event, out: list[str]) -> threading.Thread:
    def run() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    started.set()
                    out.append(line[6:])
        started.set()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_full_queue_is_429_at_once_and_late_requests_are_dropped(one_slot_server: LiveServer) -> None:
    url = one_slot_server.url
    redis_url = one_slot_server.redis_url()
    r = redis.Redis.from_url(redis_url)
    first_started = threading.Event()
    first_out: list[str] = []
    hold_tokens = tokens_lasting(url, LONG, HOLD_S, low=48, high=400)  # 400: what a fast machine needs
    wait_until(lambda: queued_or_running(r, "tiny") == 0, timeout_s=10, what="the measuring request off the queue")
    first = start_stream(url, {**LONG, "max_tokens": hold_tokens}, first_started, first_out)
    assert first_started.wait(60)
    second_result: list[httpx.Response] = []
    second = threading.Thread(target=lambda: second_result.append(
        httpx.post(url + "/v1/chat/completions", json={**LONG, "stream": False, "max_tokens": 5}, timeout=120)))
    second.start()
    wait_until(lambda: queued_or_running(r, "tiny") == 2, timeout_s=10, what="two requests queued or running")
    t0 = time.monotonic()
    third = httpx.post(url + "/v1/chat/completions", json={**LONG, "stream": False}, timeout=30)
    assert third.status_code == 429 and time.monotonic() - t0 < 1.0
    assert int(third.headers["retry-after"]) >= 1
    assert_valid("ErrorResponse", third.json())
    assert queued_or_running(r, "tiny") == 2, "a refused request was enqueued"
    second.join(150)
    assert second_result, "the queued request got no answer"
    late = second_result[0]
    assert late.status_code == 503 and "retry-after" in late.headers, late.text
    assert late.json()["error"]["code"] == "queue_timeout"
    first.join(200)
    assert first_out and first_out[-1] == "[DONE]", first_out[-3:]
    assert json.loads(first_out[-2])["choices"][0]["finish_reason"] in ("stop", "length")
    wait_until(lambda: queued_or_running(r, "tiny") == 0, timeout_s=10, what="an empty queue")


def test_serve_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    server = start_server(tmp_path, REGISTRY)
    kids = children(server.process.pid)
    assert len(kids) >= 2, "expected redis and a worker under serve"
    assert stop_server(server) == 0
    for pid in kids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), \
            f"child {pid} outlived serve"
