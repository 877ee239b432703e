"""Workers of `serve` start with only the environment they need: the gateway's client keys and
the provider keys of hosted models stay in the gateway."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx

from server.supervisor import worker_environment
from tests.conftest import child_pids, start_server, stop_server, tiny_registry

REGISTRY = tiny_registry(n_ctx=256, n_threads=1, parallel=1)


def test_the_worker_environment_is_an_allow_list() -> None:
    parent = {"PATH": "/bin", "HOME": "/home/x", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/src", "OMP_NUM_THREADS": "2",
              "CUDA_VISIBLE_DEVICES": "0", "GGML_CUDA_NO_PINNED": "1", "SLM_REDIS_URL": "redis://r", "SLM_LEASE_S": "5",
              "SLM_API_KEYS": "sk-a", "SLM_API_KEYS_FILE": "/keys", "slm_api_keys": "sk-b",
              "OPENAI_API_KEY": "sk-c", "ANTHROPIC_API_KEY": "sk-d", "AWS_SECRET_ACCESS_KEY": "e", "HF_TOKEN": "f",
              "GITHUB_TOKEN": "g", "DATABASE_URL": "postgres://u:p@h/db"}
    assert worker_environment(parent) == {
        "PATH": "/bin", "HOME": "/home/x", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/src", "OMP_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": "0", "GGML_CUDA_NO_PINNED": "1", "SLM_REDIS_URL": "redis://r", "SLM_LEASE_S": "5"}


def test_a_serving_worker_holds_neither_client_keys_nor_provider_keys(tmp_path: Path) -> None:
    client_key, provider_key = f"sk-client-{secrets.token_hex(8)}", f"sk-provider-{secrets.token_hex(8)}"
    server = start_server(tmp_path, REGISTRY, timeout_s=120,
                          env={"SLM_API_KEYS": client_key, "OPENAI_API_KEY": provider_key})
    try:
        workers = [pid for pid in child_pids(server.process.pid)
                   if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 1
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24,
                "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {client_key}"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["object"] == "chat.completion.chunk"
            environ = Path(f"/proc/{workers[0]}/environ").read_bytes()  # read while it serves the stream
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        names = {item.split(b"=", 1)[0] for item in environ.split(b"\0") if item}
        assert b"SLM_API_KEYS" not in names and b"OPENAI_API_KEY" not in names
        assert client_key.encode() not in environ and provider_key.encode() not in environ
        assert {b"PATH", b"SLM_REDIS_URL", b"SLM_REGISTRY"} <= names  # what it does need, it has
        assert child_pids(server.process.pid) and workers[0] in child_pids(server.process.pid)  # same worker
    finally:
        stop_server(server)
