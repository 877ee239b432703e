"""Per-key limits and request limits on a real server, driven past each one by one key."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import wait_until
from tests.security.conftest import CONCURRENCY, MAX_BODY, RPM, SecureServer, raw_exchange, read_response

pytestmark = pytest.mark.integration

HUNDRED_MB = 100 * 1024 * 1024
CHUNK = 256 * 1024


def chat(**extra: object) -> dict[str, object]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, **extra}


def assert_healthy(secure: SecureServer, key: str = "body") -> None:
    assert httpx.get(secure.url + "/health", timeout=10).status_code == 200
    response = httpx.post(secure.url + "/v1/chat/completions", json=chat(), headers=secure.auth(key), timeout=60)
    assert response.status_code == 200, response.text


# -- per-key limits --------------------------------------------------------------------------------
def test_a_burst_past_the_rpm_limit_gets_429_while_another_key_is_served(secure: SecureServer) -> None:
    refused: list[httpx.Response] = []
    served = 0
    with httpx.Client(timeout=10, headers=secure.auth("burst")) as client:
        # a sliding window: exactly RPM of them admitted within a minute, wherever its boundaries fall
        for _ in range(RPM + 3):
            response = client.get(secure.url + "/v1/models")
            assert response.status_code in (200, 429), response.text
            if response.status_code == 429:
                refused.append(response)
            else:
                served += 1
                assert response.headers["x-ratelimit-remaining-requests"] == str(RPM - served)
    assert len(refused) == 3 and served == RPM
    first = refused[0]
    assert first.json()["error"]["type"] == "rate_limit_exceeded"
    assert 1 <= int(first.headers["retry-after"]) <= 60  # when the first of the burst leaves the window
    assert first.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == first.headers["retry-after"] + "s"

    other = httpx.get(secure.url + "/v1/models", headers=secure.auth("other"), timeout=10)
    assert other.status_code == 200, other.text
    assert other.headers["x-ratelimit-limit-requests"] == str(RPM)


@pytest.fixture
def held_request(secure: SecureServer) -> Iterator[socket.socket]:
    """A request of key `conc` that holds its slot: its chunked body never finishes (until closed)."""
    sock = socket.create_connection(("127.0.0.1", int(secure.url.rsplit(":", 1)[1])), timeout=10)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {secure.keys['conc']}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n5\r\n{{\"mod\r\n").encode()
    sock.sendall(head)
    try:
        yield sock
    finally:
        sock.close()


def test_the_concurrency_limit_holds_per_key(secure: SecureServer, held_request: socket.socket) -> None:
    assert CONCURRENCY == 1
    url = secure.url + "/v1/models"

    def refused() -> bool:
        response = httpx.get(url, headers=secure.auth("conc"), timeout=10)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert response.headers["retry-after"] == "1"
            return True
        return False

    wait_until(refused, timeout_s=10, what="a second request of the same key to be refused", interval_s=0.2)
    assert httpx.get(url, headers=secure.auth("conc-other"), timeout=10).status_code == 200
    held_request.close()  # the client gone, its slot is given back
    wait_until(lambda: httpx.get(url, headers=secure.auth("conc"), timeout=10).status_code == 200,
               timeout_s=10, what="the slot of a closed request to be released", interval_s=0.2)


# -- body size -------------------------------------------------------------------------------------
def test_a_100mb_chunked_body_is_refused_without_being_read(secure: SecureServer) -> None:
    sent = [0]

    def body() -> Iterator[bytes]:
        block = b"x" * CHUNK
        while sent[0] < HUNDRED_MB:
            sent[0] += CHUNK
            yield block

    started = time.monotonic()
    response = httpx.post(secure.url + "/v1/chat/completions", content=body(),
                          headers={**secure.auth("body"), "Content-Type": "application/json"},
                          timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert response.headers["connection"] == "close"
    assert sent[0] < HUNDRED_MB // 2, f"the client sent {sent[0]} bytes: the server kept reading"
    assert time.monotonic() - started < 10
    assert_healthy(secure)


def test_a_100mb_content_length_is_refused_before_any_byte_of_it(secure: SecureServer) -> None:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secure.keys['body']}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {HUNDRED_MB}\r\n\r\n").encode()
    status, raw = raw_exchange(secure.url, head, b'{"model": "tiny", ')  # the rest never comes
    assert status == 413, raw[:400]
    assert b"request_too_large" in raw
    assert b"connection: close" in raw.lower()
    assert_healthy(secure)


def test_a_body_over_the_limit_in_small_chunks_is_cut_off_at_the_limit(secure: SecureServer) -> None:
    port = int(secure.url.rsplit(":", 1)[1])
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {secure.keys['body']}"
            f"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        block = b"y" * 65536
        frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        for _ in range(MAX_BODY // len(block) + 1):  # one block past the limit, then nothing: no end chunk
            sock.sendall(frame)
        status, raw = read_response(sock)
    assert status == 413, raw[:400]


def test_content_length_at_the_limit_is_still_served(secure: SecureServer) -> None:
    padding = " " * (MAX_BODY - 200)
    body = json.dumps(chat()).encode()[:-1] + b', "user": "' + padding.encode() + b'"}'
    assert len(body) <= MAX_BODY
    response = httpx.post(secure.url + "/v1/chat/completions", content=body, timeout=60,
                          headers={**secure.auth("body"), "Content-Type": "application/json"})
    assert response.status_code == 200, response.text[:300]


# -- request shape ---------------------------------------------------------------------------------
def test_100k_messages_are_refused_with_400(secure: SecureServer) -> None:
    body = '{"model": "tiny", "messages": [' + ",".join(['{"role":"user","content":"hi"}'] * 100_000) + "]}"
    assert len(body) < MAX_BODY
    response = httpx.post(secure.url + "/v1/chat/completions", content=body, timeout=30,
                          headers={**secure.auth("body"), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("content", [
    "z" * 1_000_001,
    [{"type": "text", "text": "z" * 600_000}, {"type": "text", "text": "z" * 600_000}],
], ids=["string", "parts"])
def test_a_message_over_a_million_characters_is_refused(secure: SecureServer, content: object) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}]}
    response = httpx.post(secure.url + "/v1/chat/completions", json=body, headers=secure.auth("body"), timeout=30)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"].startswith("messages.0.content")


@pytest.mark.parametrize(("extra", "param"), [
    ({"api_base": "http://169.254.169.254/latest"}, "api_base"),
    ({"base_url": "http://evil.example"}, "base_url"),
    ({"api_key": "sk-attacker"}, "api_key"),
    ({"custom_llm_provider": "openai"}, "custom_llm_provider"),
    ({"litellm_params": {"api_base": "http://evil.example"}}, "litellm_params"),
    ({"extra_body": {"api_base": "http://evil.example"}}, "extra_body.api_base"),
    ({"API_BASE": "http://evil.example"}, "API_BASE"),
])
def test_provider_fields_cannot_be_smuggled_in_the_body(secure: SecureServer, extra: dict[str, object],
                                                        param: str) -> None:
    for path, body in (("/v1/chat/completions", chat(**extra)),
                       ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, **extra})):
        response = httpx.post(secure.url + path, json=body, headers=secure.auth("smuggle"), timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_provider_fields_cannot_be_smuggled_through_the_openai_client(secure: SecureServer) -> None:
    client = openai.OpenAI(base_url=secure.url + "/v1", api_key=secure.keys["smuggle"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"api_base": "http://evil.example", "api_key": "sk-x"})
    assert info.value.body is not None and "api_" in str(info.value.body)
    client.close()


@pytest.mark.parametrize("value", ["0", "-1", "2147483648", "9223372036854775808", "1e30", "1e309", "9" * 5000,
                                   "4.5", "null, \"max_tokens\": 99999999"])
def test_a_hostile_max_tokens_is_refused_with_400(secure: SecureServer, value: str) -> None:
    body = '{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + value + "}"
    response = httpx.post(secure.url + "/v1/chat/completions", content=body, timeout=30,
                          headers={**secure.auth("hostile"), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["param"] in ("max_tokens", None)


def hostile_bodies() -> dict[str, bytes]:
    return {
        "not-json": b'{"model": "tiny", "messages": [',
        "not-utf8": b'{"model": "tiny\xff\xfe"}',
        "array": b"[1, 2, 3]",
        "wrong-types": b'{"model": 7, "messages": "hi", "temperature": "hot"}',
        "unknown-model": b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "hi"}]}',
        "bad-role": b'{"model": "tiny", "messages": [{"role": "root", "content": "hi"}]}',
        "huge-int": b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": ' + b"9" * 5000 + b"}",
        "deep-nesting": b'{"model": "tiny", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    }


@pytest.mark.parametrize("case", list(hostile_bodies()))
def test_errors_carry_no_traceback_path_or_key(secure: SecureServer, case: str) -> None:
    response = httpx.post(secure.url + "/v1/chat/completions", content=hostile_bodies()[case], timeout=30,
                          headers={**secure.auth("errors"), "Content-Type": "application/json"})
    assert response.status_code in (400, 404, 500), response.text[:300]  # never a 429: its own key
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    text = response.text
    for leak in ("Traceback", 'File "', ".py", "/work", "site-packages", secure.keys["errors"]):
        assert leak not in text, f"{leak!r} in {text[:300]}"
    assert_healthy(secure, "errors")


def test_a_deeply_nested_body_is_a_400(secure: SecureServer) -> None:
    response = httpx.post(secure.url + "/v1/chat/completions", content=hostile_bodies()["deep-nesting"], timeout=30,
                          headers={**secure.auth("hostile"), "Content-Type": "application/json"})
    assert response.status_code == 400, response.text[:300]
