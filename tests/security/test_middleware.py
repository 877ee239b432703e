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
JSON = {"Content-Type": "application/json"}


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"path": request.url.path, "bytes": len(body)})


def client(**settings: object) -> httpx.AsyncClient:
    config = SecurityConfig.from_settings(Settings(**settings))  # type: ignore[arg-type]
    inner = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app = SecurityMiddleware(inner, config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")


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
        ok = await c.post("/v1/x", content=body(4), headers=JSON)
        assert ok.status_code == 200 and ok.json()["bytes"] == 4096
        big = await c.post("/v1/x", content=body(5), headers=JSON)
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


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON ; charset=UTF-8", "application/merge-patch+json"])
async def test_json_content_types_are_accepted(content_type: str) -> None:
    async with client() as c:
        response = await c.post("/v1/x", content=b"{}", headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain; charset=utf-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "text/json", "application/jsonx"])
async def test_a_body_that_is_not_declared_json_is_refused(content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with client() as c:
        response = await c.post("/v1/x", content=b'{"model": "m"}', headers=headers)
        bodiless = await c.post("/v1/x")  # no body: nothing to declare, the route judges it
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "unsupported_content_type"
    assert "application/json" in response.json()["error"]["message"]
    assert response.headers["connection"] == "close"
    assert bodiless.status_code == 200


@pytest.mark.parametrize(("host", "served"), [
    ("localhost", True), ("LOCALHOST:8000", True), ("localhost.", True), ("127.0.0.1:9", True), ("[::1]:80", True),
    ("10.1.2.3", True), ("evil.example", False), ("localhost.evil.example", False), ("127.0.0.1.nip.io", False),
    ("localhost:http", False), ("[::1", False), ("[evil]:80", False),
])
async def test_an_open_server_serves_only_local_names_and_ip_literals(host: str, served: bool) -> None:
    async with client() as c:
        response = await c.get("/v1/models", headers={"Host": host})
        probe = await c.get("/health", headers={"Host": host})
    assert response.status_code == (200 if served else 400), response.text
    if not served:
        assert response.json()["error"]["code"] == "invalid_host"
    assert probe.status_code == 200  # probes name the pod by IP or by name: never refused for the Host


async def test_allowed_hosts_setting_and_keys_widen_the_host_list() -> None:
    async with client(allowed_hosts="api.example, *.corp.example") as c:
        for host, status in (("api.example", 200), ("a.b.corp.example:443", 200), ("corp.example", 400),
                             ("localhost", 400), ("192.168.1.9", 200)):
            assert (await c.get("/v1/models", headers={"Host": host})).status_code == status, host
    async with client(allowed_hosts="*") as c:
        assert (await c.get("/v1/models", headers={"Host": "anything.example"})).status_code == 200
    async with client(api_keys=SecretStr(KEY)) as c:  # keys protect: any host, with a key
        auth = {"Authorization": f"Bearer {KEY}", "Host": "anything.example"}
        assert (await c.get("/v1/models", headers=auth)).status_code == 200
    async with client(host="gpu-box.lan") as c:  # the bind host, when a name, is served
        assert (await c.get("/v1/models", headers={"Host": "gpu-box.lan:8000"})).status_code == 200
