"""The compose topology, run for real without Docker: Redis, the gateway and two CPU workers on
127.0.0.1, each started with the command and environment compose.yaml (over the image's ENV)
gives it. Only what a container changes is changed: hostnames become 127.0.0.1, ports become free
ones, bind-mounted paths become their host directories, HOSTNAME differs per instance."""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from openai import OpenAI

from server.queue import keys

from . import compose
from .redis_process import free_port, running_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

WORKER_INSTANCES = 2
READY_DEADLINE_S = 300
STOP_DEADLINE_S = 60
PORT_SETTINGS = {"gateway": "SLM_PORT", "worker-cpu": "SLM_WORKER_PORT"}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    port: int

    def tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n{text[-chars:]}"


def slm_server_executable() -> str:
    script = Path(sys.executable).with_name("slm-server")
    if not script.exists():
        pytest.fail(f"{script} is missing: install the project (pip install -e .)", pytrace=False)
    return str(script)


def host_path(service: dict[str, Any], value: str) -> str:
    """Container path(s) (colon-separated) -> the host directories compose bind-mounts there."""
    mapped = []
    for part in value.split(":"):
        for mount in compose.mounts(service):
            if mount.bind and (part == mount.target or part.startswith(mount.target + "/")):
                mapped.append(str(Path(mount.source) / posixpath.relpath(part, mount.target)))
                break
        else:
            pytest.fail(f"{part} is not inside any bind mount of the service: the container would not have it")
    return ":".join(mapped)


def local_environment(
    spec: dict[str, Any], name: str, *, redis_port: int, port: int, hostname: str, home: Path
) -> dict[str, str]:
    service = spec["services"][name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLM_", "OPENAI_"))}
    for key, value in compose.effective_environment(service).items():
        if value is not None:  # None: compose passes the shell's value; this test exports none
            env[key] = value
    url = urlsplit(env["SLM_REDIS_URL"])
    assert url.hostname in spec["services"], f"{name}: SLM_REDIS_URL host {url.hostname} is no compose service"
    env["SLM_REDIS_URL"] = url._replace(netloc=f"127.0.0.1:{redis_port}").geturl()
    assert env["SLM_HOST"] == "0.0.0.0"
    env["SLM_HOST"] = "127.0.0.1"  # never listen beyond loopback here
    assert PORT_SETTINGS[name] in env, f"{name}: {PORT_SETTINGS[name]} unset"
    env[PORT_SETTINGS[name]] = str(port)
    for key in ("SLM_REGISTRY", "SLM_MODEL_DIRS"):
        env[key] = host_path(service, env[key])
    env["HOSTNAME"] = hostname  # Docker gives every container its own
    env["HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    return env


def start(spec: dict[str, Any], name: str, instance: int, redis_port: int, tmp_path: Path) -> Process:
    label = f"{name}-{instance}"
    port = free_port()
    env = local_environment(spec, name, redis_port=redis_port, port=port, hostname=label, home=tmp_path / label)
    log = tmp_path / f"{label}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [slm_server_executable(), *compose.command(spec["services"][name])],
            env=env,
            cwd=env["HOME"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(label, popen, log, env, port)


def logs(processes: list[Process]) -> str:
    return "\n".join(p.tail() for p in processes)


def wait_until_ready(url: str, processes: list[Process], deadline: float) -> None:
    last: object = None
    while True:
        for process in processes:
            if process.popen.poll() is not None:
                pytest.fail(f"{process.name} exited while waiting for {url}\n{logs(processes)}", pytrace=False)
        try:
            response = httpx.get(url, timeout=3)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            pytest.fail(f"{url} not ready in time (last: {last})\n{logs(processes)}", pytrace=False)
        time.sleep(0.25)


def stop(processes: list[Process]) -> dict[str, int | None]:
    """SIGTERM each (as `docker compose stop` does), wait, SIGKILL what is left."""
    for process in processes:
        if process.popen.poll() is None:
            process.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_DEADLINE_S
    codes: dict[str, int | None] = {}
    for process in processes:
        try:
            codes[process.name] = process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(timeout=10)
            codes[process.name] = None
    return codes


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[tuple[dict[str, Any], list[Process], redis.Redis]]:
    spec = compose.load()
    redis_args = compose.command(spec["services"]["redis"])
    processes: list[Process] = []
    with ExitStack() as stack:
        redis_port, _ = stack.enter_context(running_redis(redis_args[1:], tmp_path / "redis"))
        client = redis.Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
        stack.callback(client.close)
        try:
            processes.append(start(spec, "gateway", 1, redis_port, tmp_path))
            for instance in range(1, WORKER_INSTANCES + 1):
                processes.append(start(spec, "worker-cpu", instance, redis_port, tmp_path))
            yield spec, processes, client
        finally:
            stop(processes)


def test_gateway_and_two_cpu_workers_serve_a_chat_completion(
    topology: tuple[dict[str, Any], list[Process], redis.Redis],
) -> None:
    spec, processes, client = topology
    gateway, workers = processes[0], processes[1:]
    deadline = time.monotonic() + READY_DEADLINE_S
    for worker in workers:
        wait_until_ready(f"http://127.0.0.1:{worker.port}/ready", processes, deadline)
    wait_until_ready(f"http://127.0.0.1:{gateway.port}/ready", processes, deadline)

    # compose's healthchecks pass as written (the image's `python` is this interpreter), with compose's
    # reading of them: a service is unhealthy after `retries` failed probes in a row, not after one
    for process in processes:
        service = process.name.rsplit("-", 1)[0]
        healthcheck = spec["services"][service]["healthcheck"]
        check = healthcheck["test"]
        assert check[:2] == ["CMD", "python"]
        failures: list[str] = []
        for _ in range(int(healthcheck.get("retries", 3))):
            result = subprocess.run(
                [sys.executable, *check[2:]], env=process.env, capture_output=True, timeout=30, check=False
            )
            if result.returncode == 0:
                break
            failures.append(result.stderr.decode()[-1000:])
        assert process.popen.poll() is None, process.tail()
        assert len(failures) < int(healthcheck.get("retries", 3)), (
            f"{service} healthcheck failed {len(failures)} times in a row: {failures[-1]}\n{process.tail()}")

    # what Prometheus scrapes
    for process in processes:
        metrics = httpx.get(f"http://127.0.0.1:{process.port}/metrics", timeout=10)
        assert metrics.status_code == 200 and "slm_" in metrics.text, process.name

    model = compose.command(spec["services"]["worker-cpu"])[2]
    openai = OpenAI(base_url=f"http://127.0.0.1:{gateway.port}/v1", api_key="unused", timeout=120, max_retries=0)
    try:
        completion = openai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
        )  # greedy: a sampled answer may be only whitespace, which says nothing about the topology
    finally:
        openai.close()
    answer = completion.choices[0].message.content
    assert answer and answer.strip(), f"empty answer\n{logs(processes)}"
    assert completion.model == model

    # the two scaled workers announce themselves under distinct ids (heartbeats of the model)
    workers_seen: list[str] = []
    heartbeat_deadline = time.monotonic() + 15
    while len(workers_seen) < WORKER_INSTANCES and time.monotonic() < heartbeat_deadline:
        workers_seen = client.zrange(keys.worker_heartbeats(model), 0, -1)
        time.sleep(0.2)
    assert len(workers_seen) >= WORKER_INSTANCES, f"worker ids {workers_seen}\n{logs(processes)}"

    codes = stop(processes)
    assert all(code in (0, -signal.SIGTERM) for code in codes.values()), f"{codes}\n{logs(processes)}"
