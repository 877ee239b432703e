"""Browsers against a real open server (no API keys, the default), in raw HTTP.

A page elsewhere may send "simple" requests without asking (`text/plain`, no type, forms) and may
re-point its own name at the server (DNS rebinding); the server refuses both. `/docs` is off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import httpx
import pytest

from server.api.docs import DOCS_HEADERS, SWAGGER_UI, docs_page
from server.registry import parse_registry
from server.settings import Settings
from tests.conftest import SMOLLM2, LiveServer, wait_until
from tests.gateway_thread import running_gateway
from tests.security.conftest import raw_exchange

pytestmark = pytest.mark.integration

CHAT = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2}).encode()
ENVELOPE = {"message", "type", "param", "code"}


def request(method: str, path: str, *, host: str, content_type: str | None = None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def error_of(raw: bytes) -> dict[str, object]:
    error: dict[str, object] = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
    assert set(error) == ENVELOPE
    return error


def request_id(raw: bytes) -> str:
    found = re.search(rb"x-request-id: (req_[0-9a-f]+)", raw, re.IGNORECASE)
    assert found is not None, raw[:300]
    return found.group(1).decode()


def test_a_post_not_declared_json_is_refused_and_json_is_served(open_server: LiveServer) -> None:
    local = open_server.url.removeprefix("http://")
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", None):
        status, raw = raw_exchange(open_server.url, request("POST", "/v1/chat/completions", host=local,
                                                            content_type=content_type, body=CHAT))
        assert status == 400, raw[:300]
        error = error_of(raw)
        assert error["code"] == "unsupported_content_type" and error["type"] == "invalid_request_error"
        assert "application/json" in str(error["message"])
        rid = request_id(raw)
        wait_until(lambda rid=rid: f"[{rid}]" in open_server.log(), timeout_s=5, what="the refusal's log line")
    status, raw = raw_exchange(open_server.url, request("POST", "/v1/chat/completions", host=local,
                                                        content_type="application/json; charset=utf-8", body=CHAT),
                               timeout_s=60)
    assert status == 200, raw[:300]
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["choices"][0]["message"]["role"] == "assistant"
    assert "Traceback" not in open_server.log()


def test_a_foreign_host_is_refused_and_local_names_are_served(open_server: LiveServer) -> None:
    port = open_server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost.evil.example:{port}"):
        for method, path, body in (("GET", "/v1/models", b""), ("POST", "/v1/chat/completions", CHAT),
                                   ("GET", "/", b"")):
            status, raw = raw_exchange(open_server.url, request(method, path, host=host, body=body,
                                                                content_type="application/json" if body else None))
            assert status == 400, (host, path, raw[:300])
            error = error_of(raw)
            assert error["code"] == "invalid_host" and host in str(error["message"])
        for probe in ("/health", "/ready", "/metrics"):  # kubelet and Prometheus: never refused for the Host
            status, raw = raw_exchange(open_server.url, request("GET", probe, host=host))
            assert status == 200, (host, probe, raw[:300])
    for host in (f"localhost:{port}", f"LOCALHOST.:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "10.0.0.7"):
        status, raw = raw_exchange(open_server.url, request("POST", "/v1/chat/completions", host=host,
                                                            content_type="application/json", body=CHAT), timeout_s=60)
        assert status == 200, (host, raw[:300])


def test_docs_are_off_by_default(open_server: LiveServer) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        response = httpx.get(open_server.url + path, timeout=10)
        assert response.status_code == 404, (path, response.text[:200])
        assert set(response.json()["error"]) == ENVELOPE


def test_docs_when_enabled_are_a_sandboxed_page_from_a_pinned_cdn(redis_url: str) -> None:
    registry = parse_registry({"models": {"tiny": {"gguf": SMOLLM2}}})
    with running_gateway(Settings(redis_url=redis_url, docs=True, reload_interval_s=0), registry) as url:
        page = httpx.get(url + "/docs", timeout=10)
        schema = httpx.get(url + "/openapi.json", timeout=10)
    assert page.status_code == 200 and schema.status_code == 200
    assert "/v1/chat/completions" in schema.json()["paths"]
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["sandbox"] == "allow-scripts"  # an opaque origin: no access to the page's localStorage
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert re.fullmatch(r"https://cdn\.jsdelivr\.net/npm/swagger-ui-dist@\d+\.\d+\.\d+/", SWAGGER_UI)  # pinned
    html = page.text
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith(SWAGGER_UI), src
    inline = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert directives["script-src"] == f"{SWAGGER_UI} 'sha256-{digest}'"
    embedded = re.search(r'<script type="application/json" id="spec">(.*?)</script>', html, re.DOTALL)
    assert embedded is not None and json.loads(embedded.group(1)) == schema.json()
    assert page.headers["x-content-type-options"] == DOCS_HEADERS["X-Content-Type-Options"]


def test_the_schema_cannot_close_its_data_block() -> None:
    html = docs_page({"info": {"description": "</script><script>alert(1)</script>"}}).decode()
    assert html.count("</script>") == 3  # the data block, the bundle, the start-up line: none from the schema
    data = html.split('id="spec">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["info"]["description"] == "</script><script>alert(1)</script>"
