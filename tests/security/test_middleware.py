"""`SecurityMiddleware` around a tiny ASGI app, driven in-process (no server, no Redis)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.security import SecurityConfig, SecurityMiddleware
from server.settings import Settings

KEY = "sk-unit-" + "k" * 32


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"path": request.url.path, "bytes": len(body)})


def client(**settings: object) -> httpx.AsyncClient:
    config = SecurityConfig.from_settings(Settings(**settings))  # type: ignore[arg-type]
    inner = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app = SecurityMiddleware(inner, config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_metrics_is_open_unless_protected() -> None:
    async with client(api_keys=SecretStr(KEY)) as c:
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/v1/models")).status_code == 401
        assert (await c.get("/static/app.js")).status_code == 200
        assert (await c.get("/static/../v1/models")).status_code == 401
    async with client(api_keys=SecretStr(KEY), protect_metrics=True) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
        assert (await c.get("/health")).status_code == 200


async def test_without_keys_everything_is_open_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="slm.security"):
        async with client() as c:
            assert (await c.get("/v1/models")).status_code == 200
    assert "NO API KEYS CONFIGURED" in caplog.text


async def test_body_limit_counts_streamed_bytes() -> None:
    async def body(n: int) -> AsyncIterator[bytes]:
        for _ in range(n):
            yield b"x" * 1024

    async with client(max_body_bytes=4096) as c:
        ok = await c.post("/v1/x", content=body(4))
        assert ok.status_code == 200 and ok.json()["bytes"] == 4096
        big = await c.post("/v1/x", content=body(5))
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert big.headers["connection"] == "close"
        declared = await c.post("/v1/x", content=b"x" * 5000)
        assert declared.status_code == 413


async def test_a_malformed_content_length_is_400() -> None:
    async with client() as c:
        response = await c.post("/v1/x", content=b"abc", headers={"Content-Length": "3, 4"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_content_length"
