"""Registry edits under continuous load: add, remove, swap a GGUF, change an alias, save garbage —
with zero failed requests."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from server.queue import keys
from tests.conftest import GEMMA3, SMOLLM2, LiveServer, start_server, stop_server, wait_until

pytestmark = pytest.mark.integration


def registry(main_gguf: str = SMOLLM2, alias: str = "small", extra: bool = False, on_demand: bool = False) -> str:
    """`on_demand`: `smollm2` gets no worker until a request asks for it (a test of the listing needs none)."""
    text = f"""
models:
  smollm2:
    gguf: {main_gguf}
    aliases: [{alias}]
    n_ctx: 1024
    n_threads: 1
    parallel: 2
""" + ("    load: on_demand\n" if on_demand else "")
    if extra:
        text += f"""  extra:
    gguf: {SMOLLM2}
    n_ctx: 512
    n_threads: 1
    parallel: 1
"""
    return text


class Load:
    """Clients sending requests to `smollm2` non-stop until told to stop."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.stop = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, i: int) -> None:
        body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 6}
        for n in range(10_000):
            if self.stop.is_set():
                return
            stream = (n + i) % 2 == 0
            try:
                if stream:
                    with httpx.stream("POST", self.url + "/v1/chat/completions", json={**body, "stream": True},
                                      timeout=120) as response:
                        frames = [line for line in response.iter_lines() if line.startswith("data: ")]
                        ok = response.status_code == 200 and frames[-1] == "data: [DONE]" and \
                            '"error"' not in frames[-2]
                        self.results.append((200 if ok else response.status_code or 599, frames[-2] if frames else ""))
                else:
                    response = httpx.post(self.url + "/v1/chat/completions", json=body, timeout=120)
                    self.results.append((response.status_code, response.text[:200]))
            except httpx.HTTPError as exc:
                self.results.append((599, repr(exc)))

    def finish(self) -> list[tuple[int, str]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)
        return self.results


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    srv = start_server(tmp_path, registry(), env={"SLM_RELOAD_INTERVAL_S": "0.3"})
    yield srv
    stop_server(srv)


def model_ids(server: LiveServer) -> set[str]:
    return {m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]}


def reloads(server: LiveServer, result: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f'slm_registry_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_registry_edits_under_load_fail_no_request(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "model_registry.yaml"
    r = redis.Redis.from_url(server.redis_url())
    load = Load(server.url)
    try:
        wait_until(lambda: len(load.results) >= 3, timeout_s=60, what="load to flow")

        path.write_text(registry(extra=True))
        wait_until(lambda: "extra" in model_ids(server), timeout_s=10, what="the added model in /v1/models")
        wait_until(lambda: httpx.get(server.url + "/ready", timeout=5).status_code == 200, timeout_s=60,
                   what="a worker for the added model")
        added = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                           json={"model": "extra", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert added.status_code == 200

        path.write_text(registry())
        wait_until(lambda: "extra" not in model_ids(server), timeout_s=10, what="the removed model to go")
        gone = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                          json={"model": "extra", "messages": [{"role": "user", "content": "hi"}]})
        assert gone.status_code == 404

        path.write_text(registry(main_gguf=GEMMA3))

        def swapped() -> bool:
            infos = [r.hgetall(k) for k in r.scan_iter(match=keys.worker_info("*"))]
            files = {i[b"file"].decode() for i in infos if i.get(b"model") == b"smollm2"}
            return files == {"gemma-3-270m-q4_k_m.gguf"}

        wait_until(swapped, timeout_s=120, what="smollm2 to be served by the Gemma GGUF only", interval_s=0.2)

        path.write_text(registry(main_gguf=GEMMA3, alias="tiny"))
        wait_until(lambda: "tiny" in model_ids(server) and "small" not in model_ids(server), timeout_s=10,
                   what="the alias change")

        failures_before = reloads(server, "failure")
        path.write_text("models:\n  smollm2:\n    gguf: [oops\n")
        wait_until(lambda: reloads(server, "failure") > failures_before, timeout_s=10, what="a failed reload")
        assert "tiny" in model_ids(server) and "smollm2" in model_ids(server)
        count = len(load.results)
        wait_until(lambda: len(load.results) >= count + 3, timeout_s=60, what="load after the bad edit")
    finally:
        results = load.finish()
    failed = [(code, text) for code, text in results if code != 200]
    assert not failed, failed[:5]
    assert len(results) >= 10


def test_sighup_reloads_at_once(tmp_path: Path) -> None:
    srv = start_server(tmp_path, registry(on_demand=True), env={"SLM_RELOAD_INTERVAL_S": "3600"})
    try:
        (tmp_path / "model_registry.yaml").write_text(registry(alias="renamed", on_demand=True))
        srv.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "renamed" in model_ids(srv), timeout_s=10, what="SIGHUP to apply the edit")
    finally:
        stop_server(srv)


def hosted(api_base: str, key_env: str = "OPENAI_API_KEY") -> str:
    return registry() + f"""  up:
    backend: hosted
    litellm_model: openai/x
    api_base: {api_base}
    api_key_env: {key_env}
"""


def test_a_reload_naming_a_server_secret_is_refused_and_upstream_changes_are_logged(
        server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "model_registry.yaml"
    failures = reloads(server, "failure")
    path.write_text(hosted("http://127.0.0.1:9/v1", key_env="SLM_API_KEYS"))
    wait_until(lambda: reloads(server, "failure") > failures, timeout_s=10, what="the refused reload")
    assert "models.up.api_key_env" in server.log() and "up" not in model_ids(server)

    path.write_text(hosted("http://127.0.0.1:9/v1", key_env="HOME"))
    wait_until(lambda: reloads(server, "failure") > failures + 1, timeout_s=10, what="the second refused reload")
    assert "models.up.api_key_env: 'HOME' is not an allowed provider key variable" in server.log()
    assert "up" not in model_ids(server) and "smollm2" in model_ids(server)

    path.write_text(hosted("http://user:hunter2@127.0.0.1:9/v1?token=tok-secret"))
    wait_until(lambda: "up" in model_ids(server), timeout_s=10, what="the hosted model to appear")
    path.write_text(hosted("http://127.0.0.1:10/v1", key_env="OTHER_API_KEY"))
    line = "WARNING slm.reload [-] registry reload: models.up.api_base changed: " \
           "http://***@127.0.0.1:9/v1?*** -> http://127.0.0.1:10/v1"
    wait_until(lambda: line in server.log(), timeout_s=10, what="the api_base change in the log")
    assert "models.up.api_key_env changed: OPENAI_API_KEY -> OTHER_API_KEY" in server.log()
    assert "hunter2" not in server.log() and "tok-secret" not in server.log()
