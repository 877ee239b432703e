"""Redis or workers missing: /health stays up, /ready and requests say 503 with Retry-After, quickly."""

from __future__ import annotations

import time

import httpx
import pytest

from server.embedded_redis import free_port
from server.registry import parse_registry
from server.settings import Settings
from tests.conftest import SMOLLM2
from tests.gateway_thread import running_gateway
from tests.openapi import assert_valid

pytestmark = pytest.mark.integration

REGISTRY = parse_registry({"models": {"lonely": {"gguf": SMOLLM2}}})
CHAT = {"model": "lonely", "messages": [{"role": "user", "content": "hi"}]}


def test_redis_unreachable_gives_503_fast(tmp_path: object) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    with running_gateway(settings, REGISTRY) as url:
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        ready = httpx.get(url + "/ready", timeout=5)
        assert ready.status_code == 503 and "redis is unreachable" in ready.json()["reasons"]
        for stream in (False, True):
            t0 = time.monotonic()
            response = httpx.post(url + "/v1/chat/completions", json={**CHAT, "stream": stream}, timeout=10)
            assert time.monotonic() - t0 < 2.0
            assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
            assert_valid("ErrorResponse", response.json())


def test_no_worker_for_the_model_gives_503(redis_url: str) -> None:
    with running_gateway(Settings(redis_url=redis_url), REGISTRY) as url:
        ready = httpx.get(url + "/ready", timeout=5)
        assert ready.status_code == 503
        assert "no ready worker for model 'lonely'" in ready.json()["reasons"]
        response = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert response.status_code == 503 and response.json()["error"]["code"] == "no_worker"
        assert "retry-after" in response.headers
        assert httpx.post(url + "/v1/chat/completions", json={**CHAT, "model": "nope"}, timeout=10).status_code == 404
