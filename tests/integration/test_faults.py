"""Real faults on a real `serve` (two worker processes, one slot each): SIGKILL and SIGSTOP of
workers, clients that hang up, a request that crashes the worker that takes it (the test-only
`SLM_TEST_CRASH_MARKER` makes a worker abort on a prompt holding the marker)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from server.queue import keys
from tests.conftest import SMOLLM2, LiveServer, start_server, stop_server, wait_until

pytestmark = pytest.mark.integration

REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 1024
    n_threads: 1
    parallel: 1
    replicas: 2
    max_queue: 16
"""
CRASH_MARKER = "crash-this-worker-7f3a"
ENV = {"SLM_LEASE_S": "1.5", "SLM_STALL_TIMEOUT_S": "4", "SLM_MAX_DELIVERIES": "2",
       "SLM_TEST_CRASH_MARKER": CRASH_MARKER}
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("faults"), REGISTRY, env=ENV)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def r(server: LiveServer) -> redis.Redis:
    return redis.Redis.from_url(server.redis_url())


def worker_pids(server: LiveServer) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if b"worker" in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid \
                    and stat.rsplit(")", 1)[1].split()[0] != "Z":
                pids.append(int(entry.name))
    return pids


def all_workers_ready(server: LiveServer, n: int = 2) -> None:
    wait_until(lambda: len(worker_pids(server)) == n and httpx.get(server.url + "/ready", timeout=5).json()
               .get("workers", {}).get("tiny") == n, timeout_s=60, what=f"{n} ready workers")


def events_of(r: redis.Redis, job_id: str) -> list[dict[str, Any]]:
    return [json.loads(fields[b"e"]) for _, fields in r.xrange(keys.response_stream(job_id))]


def serving_worker(r: redis.Redis) -> tuple[str, int]:
    """(job id, worker pid) of the request being generated right now."""
    found: list[tuple[str, int]] = []

    def check() -> bool:
        for key in r.scan_iter(match=keys.response_stream("*")):
            job_id = key.decode().rsplit(":", 1)[1]
            evs = events_of(r, job_id)
            starts = [e for e in evs if e["type"] == "started"]
            if starts and not any(e["type"] in ("done", "error") for e in evs):
                found.append((job_id, int(starts[-1]["worker"].split("-")[-2])))
                return True
        return False

    wait_until(check, timeout_s=30, what="a request being generated", interval_s=0.005)
    return found[0]


def reference(server: LiveServer, max_tokens: int) -> str:
    body = {"model": "tiny", "messages": STORY, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200
    return str(response.json()["choices"][0]["message"]["content"])


def test_worker_killed_before_its_first_token_is_invisible(server: LiveServer, r: redis.Redis) -> None:
    all_workers_ready(server)
    long_prompt = [{"role": "user", "content": "Summarise: " + "the keeper lit the lamp again. " * 120}]
    body = {"model": "tiny", "messages": long_prompt, "max_tokens": 8, "temperature": 0}
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)))
    thread.start()
    job_id, pid = serving_worker(r)
    os.kill(pid, signal.SIGKILL)
    assert not any(e["type"] == "delta" for e in events_of(r, job_id)), "the kill came after the first token"
    thread.join(120)
    assert result[0].status_code == 200, result[0].text
    answer = result[0].json()["choices"][0]["message"]["content"]
    all_workers_ready(server)
    again = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
    assert answer == again["choices"][0]["message"]["content"]


def test_worker_killed_mid_stream_ends_the_stream_with_an_error(server: LiveServer, r: redis.Redis) -> None:
    all_workers_ready(server)
    body = {"model": "tiny", "messages": STORY, "max_tokens": 300, "temperature": 0, "stream": True}
    frames: list[str] = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                frames.append(line[6:])
            if sum('"content"' in f for f in frames) >= 4:
                break
        _, pid = serving_worker(r)
        os.kill(pid, signal.SIGKILL)
        frames.extend(line[6:] for line in lines if line.startswith("data: "))
    assert frames[-1] == "[DONE]"
    error = json.loads(frames[-2])
    assert error["error"]["code"] == "worker_lost"
    assert not any(json.loads(f)["choices"][0]["finish_reason"] for f in frames[:-2])


def test_generation_longer_than_the_lease_runs_once(server: LiveServer, r: redis.Redis) -> None:
    all_workers_ready(server)
    body = {"model": "tiny", "messages": STORY, "max_tokens": 500, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as response:
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert "error" not in last, last
    assert last["timings"]["predicted_ms"] > 1.5 * 1500, "the generation did not outlast the lease"


def test_client_disconnect_stops_generation_within_a_few_tokens(server: LiveServer, r: redis.Redis) -> None:
    all_workers_ready(server)
    body = {"model": "tiny", "messages": STORY, "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if '"content"' in line:
                job_id = json.loads(line[6:])["id"].removeprefix("chatcmpl-")
                break
    def cancelled() -> bool:
        return any(e["type"] == "done" and e.get("cancelled") for e in events_of(r, job_id))

    wait_until(cancelled, timeout_s=20, what="the worker to stop the abandoned generation")
    done = next(e for e in events_of(r, job_id) if e["type"] == "done")
    assert done["usage"]["completion_tokens"] < 60


def test_poison_request_is_dead_lettered_and_others_are_served(server: LiveServer, r: redis.Redis) -> None:
    """The first crash dead-letters the request: the client hears so at once, no other worker takes it,
    and another client's stream on the other worker completes."""
    all_workers_ready(server)
    before = set(worker_pids(server))
    exits = server.log().count("exited with")
    story = {"model": "tiny", "messages": STORY, "max_tokens": 120, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=story, timeout=120) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if '"content"' in line)
        _, healthy = serving_worker(r)
        poison = {"model": "tiny", "messages": [{"role": "user", "content": f"say {CRASH_MARKER}"}],
                  "max_tokens": 8, "temperature": 0}
        began = time.monotonic()
        answer = httpx.post(server.url + "/v1/chat/completions", json=poison, timeout=120)
        took = time.monotonic() - began
        frames = [line[6:] for line in lines if line.startswith("data: ")]
    assert answer.status_code == 500, answer.text
    assert answer.json()["error"]["code"] == "worker_crashed"
    assert "dead-lettered" in answer.json()["error"]["message"]
    assert took < 20, f"the client waited {took:.1f}s for the verdict"
    assert frames[-1] == "[DONE]" and "error" not in json.loads(frames[-2]), frames[-2]
    assert healthy in worker_pids(server)
    dead = [p for p in before if p not in worker_pids(server)]
    assert dead and healthy not in dead and len(dead) == 1, (before, dead)
    assert server.log().count("exited with") == exits + 1
    _, record = r.xrevrange(keys.dead_letters("tiny"), count=1)[0]
    assert record[b"reason"] == b"worker_crashed" and record[b"attempt"] == b"1"
    assert b"job" not in record and not any(CRASH_MARKER.encode() in v for v in record.values())
    assert 0 < r.ttl(keys.dead_letters("tiny")) <= 7 * 24 * 3600
    all_workers_ready(server)
    assert reference(server, 4)


def test_worker_frozen_mid_stream_hits_the_stall_timer(server: LiveServer, r: redis.Redis) -> None:
    all_workers_ready(server)
    body = {"model": "tiny", "messages": STORY, "max_tokens": 300, "temperature": 0, "stream": True}
    frames: list[str] = []
    pid = 0
    try:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    frames.append(line[6:])
                if sum('"content"' in f for f in frames) >= 3:
                    break
            _, pid = serving_worker(r)
            os.kill(pid, signal.SIGSTOP)
            frames.extend(line[6:] for line in lines if line.startswith("data: "))
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["error"]["code"] == "worker_lost"
