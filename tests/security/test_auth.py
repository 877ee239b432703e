"""API keys on a real server: who gets in, who does not, and what a refusal says."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.security.conftest import SecureServer, raw_exchange

pytestmark = pytest.mark.integration


def assert_401(response: httpx.Response, *, not_echoing: str | None = None) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"].startswith("Bearer")
    if not_echoing:
        assert not_echoing not in response.text


def test_open_paths_need_no_key(secure: SecureServer) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(secure.url + path, timeout=10).status_code == 200, path


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/models"), ("GET", "/v1/models/tiny"),
                                              ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                                              ("GET", "/v1/no-such-route"), ("GET", "/no-such-route")])
def test_missing_key_is_401_in_the_openai_envelope(secure: SecureServer, method: str, path: str) -> None:
    response = httpx.request(method, secure.url + path, json={"model": "tiny", "prompt": "hi"}, timeout=10)
    assert_401(response)
    assert "Bearer" in response.json()["error"]["message"]


def _bad_authorizations(key: str) -> dict[str, str]:
    basic = base64.b64encode(f"user:{key}".encode()).decode()
    return {
        "empty": "",
        "scheme-only": "Bearer",
        "basic": f"Basic {basic}",
        "basic-raw": f"Basic {key}",
        "token-scheme": f"Token {key}",
        "no-scheme": key,
        "key-upper": f"Bearer {key.upper()}",
        "key-swapcase": f"Bearer {key.swapcase()}",
        "prefix": f"Bearer {key[:-1]}",
        "suffix": f"Bearer {key}x",
        "trailing-word": f"Bearer {key} extra",
        "other-server-key": "Bearer sk-proj-" + "a" * 40,
    }


@pytest.mark.parametrize("case", list(_bad_authorizations("k")))
def test_bad_authorization_is_401(secure: SecureServer, case: str) -> None:
    key = secure.keys["auth"]
    value = _bad_authorizations(key)[case]
    response = httpx.get(secure.url + "/v1/models", headers={"Authorization": value}, timeout=10)
    assert_401(response, not_echoing=key if case != "empty" else None)


@pytest.mark.parametrize("value", [b"Bearer    ", b"Bearer\t", b"\tBearer", b"Bearer\x00", b"Bearer \xff\xfe"])
def test_odd_bytes_in_authorization_are_401(secure: SecureServer, value: bytes) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: " + value + b"\r\nConnection: close\r\n\r\n"
    status, raw = raw_exchange(secure.url, head)
    assert status in (400, 401), raw[:300]


def test_a_wrong_key_is_shown_masked(secure: SecureServer) -> None:
    wrong = "sk-wrong-0123456789abcdef0123456789abcdef"
    response = httpx.get(secure.url + "/v1/models", headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    assert_401(response, not_echoing=wrong[5:-4])
    assert "Incorrect API key provided: sk-wr****cdef" in response.json()["error"]["message"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive_key_is_not(secure: SecureServer, scheme: str) -> None:
    response = httpx.get(secure.url + "/v1/models", headers={"Authorization": f"{scheme} {secure.keys['auth']}"},
                         timeout=10)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("name", ["auth", "filed", "hashed"])
def test_keys_from_env_file_and_digest_all_work(secure: SecureServer, name: str) -> None:
    response = httpx.get(secure.url + "/v1/models", headers=secure.auth(name), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["id"] == "tiny"


def test_two_authorization_headers_are_refused(secure: SecureServer) -> None:
    headers = [("Authorization", "Bearer nope"), ("Authorization", f"Bearer {secure.keys['auth']}")]
    with httpx.Client(timeout=10) as client:
        response = client.get(secure.url + "/v1/models", headers=headers)
    assert_401(response)


def test_x_api_key_works_like_bearer(secure: SecureServer) -> None:
    key = secure.keys["auth"]
    assert httpx.get(secure.url + "/v1/models", headers={"x-api-key": key}, timeout=10).status_code == 200
    wrong = "sk-wrong-0123456789abcdef0123456789abcdef"
    for value in (wrong, "", key.upper(), key[:-1]):
        response = httpx.get(secure.url + "/v1/models", headers={"x-api-key": value}, timeout=10)
        assert_401(response, not_echoing=key if value else None)
    assert "sk-wr****cdef" in httpx.get(secure.url + "/v1/models", headers={"x-api-key": wrong}, timeout=10).text


def test_two_keys_in_two_headers_are_refused(secure: SecureServer) -> None:
    """One key a request: a valid one beside another is no way in."""
    key = secure.keys["auth"]
    for headers in ([("x-api-key", "nope"), ("Authorization", f"Bearer {key}")],
                    [("x-api-key", key), ("x-api-key", key)]):
        with httpx.Client(timeout=10) as client:
            assert_401(client.get(secure.url + "/v1/models", headers=headers))


@pytest.mark.parametrize("headers", [
    {"Host": "127.0.0.1/health?x="},
    {"Host": "evil.example/health#"},
    {"X-Forwarded-Host": "127.0.0.1/health?"},
    {"X-Original-URL": "/health"},
    {"X-Rewrite-URL": "/health"},
    {"X-Forwarded-Prefix": "/health"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"},
], ids=["host-path", "host-fragment", "fwd-host", "original-url", "rewrite-url", "fwd-prefix", "fwd-for"])
def test_a_poisoned_host_or_forwarded_header_does_not_open_v1(secure: SecureServer, headers: dict[str, str]) -> None:
    response = httpx.get(secure.url + "/v1/models", headers=headers, timeout=10)
    assert_401(response)


@pytest.mark.parametrize("target", [
    b"/v1/models", b"http://127.0.0.1/v1/models", b"http://evil.example/health/../v1/models",
    b"/health/../v1/models", b"/health/%2e%2e/v1/models", b"//v1/models", b"/v1//models", b"/V1/models",
    b"/v1%2fmodels", b"/static/../v1/models", b"/v1/models?/health", b"/v1/models#/health",
])
def test_raw_request_targets_cannot_slip_past_auth(secure: SecureServer, target: bytes) -> None:
    head = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1/health?\r\nConnection: close\r\n\r\n"
    status, raw = raw_exchange(secure.url, head)
    assert status == 401, raw[:300]
    assert b'"object": "list"' not in raw and b'"object":"list"' not in raw
