"""Structured logs: one JSON object a line, the request id on each, no prompt or answer text."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOLLM2, start_server, stop_server, wait_until

pytestmark = pytest.mark.integration

CANARY = "CANARY-q7Zx-91"


def test_json_logs_carry_request_ids_and_no_text(tmp_path: Path) -> None:
    registry = f"models:\n  tiny:\n    gguf: {SMOLLM2}\n    n_ctx: 512\n    parallel: 1\n"
    server = start_server(tmp_path, registry, env={"SLM_LOG_FORMAT": "json"})
    try:
        response = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": f"Repeat exactly: {CANARY}"}],
            "max_tokens": 16, "temperature": 0})
        assert response.status_code == 200
        rid = response.headers["x-request-id"]

        def logged() -> bool:
            return rid in server.log()

        wait_until(logged, timeout_s=10, what="the access log line")
    finally:
        stop_server(server)
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["request_id"] == rid]
    assert access and access[0]["path"] == "/v1/chat/completions" and access[0]["status"] == 200
    assert access[0]["duration_ms"] > 0
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert CANARY not in server.log()
    assert response.json()["choices"][0]["message"]["content"] not in server.log()
