"""The parts run apart, as on several machines: gateways and workers as separate processes on one
real Redis. Redis is stopped and restarted under them; gateways and workers get SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from server.embedded_redis import EmbeddedRedis, free_port
from server.queue import keys
from tests.conftest import SMOLLM2, kill_all, spawn_logged, wait_until

pytestmark = pytest.mark.integration

REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 1024
    n_threads: 1
    parallel: 2
"""
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Name a bird."}], "max_tokens": 12,
        "temperature": 0}


@dataclass
class Cluster:
    tmp: Path
    redis: EmbeddedRedis
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateways: list[str] = field(default_factory=list)

    def spawn(self, *args: str, port: int | None = None) -> subprocess.Popen[bytes]:
        env = {**self.env, "SLM_PORT": str(port or 0), "HOSTNAME": f"host{len(self.procs)}"}
        return spawn_logged(self.tmp, self.procs, env, *args)

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"proc{self.procs.index(proc)}.log").read_text(errors="replace")

    def gateway(self) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        proc = self.spawn("gateway", port=port)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(url + "/health") == 200, timeout_s=30, what="a gateway")
        self.gateways.append(url)
        return url, proc


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "model_registry.yaml").write_text(REGISTRY)
    server = EmbeddedRedis()
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_REDIS_URL": server.url, "SLM_REGISTRY": str(tmp_path / "model_registry.yaml"),
                "SLM_LEASE_S": "3", "SLM_REDIS_TIMEOUT_S": "0.5", "PYTHONUNBUFFERED": "1"})
    c = Cluster(tmp_path, server, env)
    try:
        yield c
    finally:
        kill_all(c.procs)
        c.redis.stop()


def ready(url: str, workers: int) -> bool:
    try:
        response = httpx.get(url + "/ready", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json()["workers"]["tiny"] == workers


def ask(url: str, stream: bool) -> tuple[str, str]:
    """(text, finish_reason) of one chat completion."""
    body = {**CHAT, "stream": stream}
    if not stream:
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        choice = reply.json()["choices"][0]
        return choice["message"]["content"], choice["finish_reason"]
    text, finish = "", ""
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]", frames
    for frame in frames[:-1]:
        chunk = json.loads(frame)
        assert "error" not in chunk, chunk
        text += chunk["choices"][0]["delta"].get("content") or ""
        finish = chunk["choices"][0]["finish_reason"] or finish
    return text, finish


def test_two_gateways_two_workers_answer_everything_exactly_once(cluster: Cluster) -> None:
    cluster.spawn("worker", "--model", "tiny")
    cluster.spawn("worker", "--model", "tiny")
    a, _ = cluster.gateway()
    b, _ = cluster.gateway()
    wait_until(lambda: ready(a, 2) and ready(b, 2), timeout_s=60, what="both workers")
    jobs = [(url, stream) for url in (a, b) for stream in (False, True) for _ in range(4)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: ask(*job), jobs))
    assert len({text for text, _ in answers}) == 1, "temperature 0 must give one answer everywhere"
    assert all(finish in ("stop", "length") for _, finish in answers)
    r = redis.Redis.from_url(cluster.redis.url)
    assert r.xlen(keys.request_stream("tiny")) == 0
    assert r.xpending(keys.request_stream("tiny"), keys.GROUP)["pending"] == 0


def test_redis_restart_is_survived_without_restarting_anything(cluster: Cluster) -> None:
    cluster.spawn("worker", "--model", "tiny")
    url, _ = cluster.gateway()
    wait_until(lambda: ready(url, 1), timeout_s=60, what="the worker")
    assert ask(url, False)[0]
    port = cluster.redis.port
    cluster.redis.stop()
    wait_until(lambda: _status(url + "/ready") == 503, timeout_s=10, what="/ready to turn 503")
    assert _status(url + "/health") == 200
    t0 = time.monotonic()
    refused = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert refused.status_code == 503 and time.monotonic() - t0 < 2.0
    assert "retry-after" in refused.headers
    cluster.redis = EmbeddedRedis(port=port)
    cluster.redis.start()
    wait_until(lambda: ready(url, 1), timeout_s=30, what="gateway and worker to reconnect")
    assert ask(url, True)[0]


def test_gateway_sigterm_finishes_streams_and_refuses_new_requests(cluster: Cluster) -> None:
    cluster.spawn("worker", "--model", "tiny")
    url, gateway = cluster.gateway()
    wait_until(lambda: ready(url, 1), timeout_s=60, what="the worker")
    frames: list[str] = []
    first_frame = threading.Event()
    # End-of-turn tokens banned: the answer runs its full length, so the drain below has a stream to wait for.
    body = {**CHAT, "max_tokens": 200, "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}

    def stream() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    first_frame.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_frame.wait(30)
    gateway.send_signal(signal.SIGTERM)
    refused: list[httpx.Response] = []

    def refused_with_503() -> bool:
        response = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=5)
        refused.append(response)
        return response.status_code == 503

    wait_until(refused_with_503, timeout_s=10, what="new requests to be refused with 503")
    streamed_when_refused = len(frames)
    assert refused[-1].json()["error"]["code"] == "shutting_down"
    assert refused[-1].headers["retry-after"] == "1"
    assert httpx.get(url + "/ready", timeout=5).status_code == 503
    thread.join(120)
    assert not thread.is_alive()
    assert frames[-1] == "[DONE]"
    assert "[DONE]" not in frames[:streamed_when_refused]  # refused while the stream was still running
    assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"
    try:
        assert gateway.wait(30) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the gateway did not exit after its streams ended; its log:\n" + cluster.log_of(gateway))


def test_worker_sigterm_finishes_what_it_holds_then_exits(cluster: Cluster) -> None:
    worker = cluster.spawn("worker", "--model", "tiny")
    url, _ = cluster.gateway()
    wait_until(lambda: ready(url, 1), timeout_s=60, what="the worker")
    frames: list[str] = []
    first_frame = threading.Event()
    # End-of-turn tokens banned: the answer runs its full length, so SIGTERM lands mid-generation.
    body = {**CHAT, "max_tokens": 160, "stream": True, "logit_bias": {"0": -100, "1": -100, "2": -100}}

    def stream() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:])
                    first_frame.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_frame.wait(60)
    r = redis.Redis.from_url(cluster.redis.url)
    assert r.xpending(keys.request_stream("tiny"), keys.GROUP)["pending"] == 1
    worker.send_signal(signal.SIGTERM)
    thread.join(120)
    assert frames[-1] == "[DONE]"
    assert json.loads(frames[-2])["choices"][0]["finish_reason"] == "length"
    assert worker.wait(60) == 0
    assert r.xpending(keys.request_stream("tiny"), keys.GROUP)["pending"] == 0
    assert r.zcard(keys.worker_heartbeats("tiny")) == 0


def _publishes(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))


def test_a_worker_on_the_gateways_host_hands_tokens_over_without_publishing_them(cluster: Cluster) -> None:
    """Same host (network namespace): a request's events between its `started` and its `done` reach the
    gateway on its local socket, their entries written unpublished; a gateway with SLM_LOCAL_EVENTS=false
    binds none, and every event is published as before. The answer is the same either way."""
    cluster.spawn("worker", "--model", "tiny")
    local_url, _ = cluster.gateway()
    cluster.env["SLM_LOCAL_EVENTS"] = "false"
    remote_url, _ = cluster.gateway()
    wait_until(lambda: ready(local_url, 1) and ready(remote_url, 1), timeout_s=60, what="the worker")
    client = redis.Redis.from_url(cluster.redis.url)
    try:
        counts = []
        answers = []
        for url in (local_url, remote_url):
            before = _publishes(client)
            answers.append(ask(url, True))
            counts.append(_publishes(client) - before)
    finally:
        client.close()
    assert answers[0] == answers[1] and answers[0][0]
    assert counts[0] == 2  # its `started` and its `done` alone
    assert counts[1] >= 3  # `started`, a delta or more, `done`
