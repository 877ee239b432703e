"""One real `slm-server serve` with API keys and per-key limits, on a Redis of its own.

Keys come from both sources: plain keys in `SLM_API_KEYS`, and a keys file holding one plain key
and one `sha256:` digest. Every test uses its own keys, so the per-key limits of one test never
spend another's budget (`TPM` is far above what the tests of other limits spend with one key).
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import redis

from server.embedded_redis import EmbeddedRedis
from server.security.api_keys import key_id
from tests.conftest import SMOLLM2, LiveServer, start_server, stop_server

RPM = 20
TPM = 600
CONCURRENCY = 1
MAX_BODY = 4 * 1024 * 1024
REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 512
    n_threads: 2
    parallel: 2
    embeddings: true
"""
ENV_KEYS = ("auth", "burst", "other", "conc", "conc-other", "body", "smuggle", "canary", "headers",
            "tpm", "tpm-other", "tpm-stream", "tpm-gone", "tpm-embed", "tpm-trace", "hostile", "errors",
            "inputs", "inputs-stream")
FILE_KEYS = ("filed",)
HASHED_KEYS = ("hashed",)


class NamedKeys:
    """API keys by test name: the header presenting one, and the id its limits are kept under."""

    keys: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def key_id(self, name: str) -> str:
        """The id the limits of key `name` are kept under in Redis."""
        return key_id(hashlib.sha256(self.keys[name].encode()).digest())


@dataclass
class SecureServer(NamedKeys):
    live: LiveServer
    redis_url: str
    keys: dict[str, str]

    @property
    def url(self) -> str:
        return self.live.url

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


@pytest.fixture(scope="package")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    tmp = tmp_path_factory.mktemp("secure")
    keys = {name: f"sk-{name}-{secrets.token_hex(16)}" for name in (*ENV_KEYS, *FILE_KEYS, *HASHED_KEYS)}
    keys_file = tmp / "api_keys.txt"
    lines = ["# one key a line; digests as sha256:<hex>", ""]
    lines += [keys[n] for n in FILE_KEYS]
    lines += ["sha256:" + hashlib.sha256(keys[n].encode()).hexdigest() for n in HASHED_KEYS]
    keys_file.write_text("\n".join(lines) + "\n")
    with EmbeddedRedis() as store:
        env = {
            "SLM_REDIS_URL": store.url,
            "SLM_API_KEYS": ",".join(keys[n] for n in ENV_KEYS),
            "SLM_API_KEYS_FILE": str(keys_file),
            "SLM_RATE_LIMIT_RPM": str(RPM),
            "SLM_RATE_LIMIT_TPM": str(TPM),
            "SLM_RATE_LIMIT_CONCURRENCY": str(CONCURRENCY),
        }
        live = start_server(tmp, REGISTRY, env=env)  # the default 180 s: a loaded machine needs it
        try:
            yield SecureServer(live, store.url, keys)
        finally:
            stop_server(live)


# the open server (no API keys) of the browser and slow-client tests: short deadlines, a small cap
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS_PER_CLIENT = 8


@pytest.fixture(scope="package")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `slm-server serve` without API keys (the default), with its own embedded Redis."""
    env = {"SLM_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "SLM_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
           "SLM_MAX_CONNECTIONS_PER_CLIENT": str(MAX_CONNECTIONS_PER_CLIENT)}
    live = start_server(tmp_path_factory.mktemp("open"), REGISTRY, env=env)
    try:
        yield live
    finally:
        stop_server(live)


def raw_exchange(url: str, head: bytes, body: bytes = b"", *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client normalising paths or headers); return (status, raw response)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout_s) as sock:
        sock.sendall(head + body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    header, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    status = int(header.split(b" ", 2)[1]) if header.startswith(b"HTTP/") else 0
    return status, header + b"\r\n\r\n" + rest
