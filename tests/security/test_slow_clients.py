"""Slow and greedy clients against a real open server: header and body deadlines, a cap per address.

Connections come from several loopback addresses (127.0.0.x all reach 127.0.0.1 on Linux), so the
cap per address of one test is not spent by another's connections.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer, wait_until
from tests.security.conftest import (
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS_PER_CLIENT,
    read_response,
)

pytestmark = pytest.mark.integration

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 2}


def connect(url: str, source: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10,
                                    source_address=(source, 0))


class Trickle:
    """A connection that sends `opening`, then one more byte of `drip` at each `step()`, never finishing."""

    def __init__(self, sock: socket.socket, opening: bytes, drip: bytes) -> None:
        self.sock, self.drip = sock, drip
        self.answer = b""
        self.closed_at: float | None = None
        sock.sendall(opening)
        self.opened_at = time.monotonic()
        sock.setblocking(False)

    def step(self) -> bool:
        """True once the server has closed the connection (reading first what it answered)."""
        if self.closed_at is not None:
            return True
        try:
            while chunk := self.sock.recv(65536):
                self.answer += chunk
        except BlockingIOError:  # nothing more to read and still open: send the next byte
            try:
                self.sock.send(self.drip)
                return False
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
        except ConnectionResetError:
            pass
        self.closed_at = time.monotonic()
        self.sock.close()
        return True


def test_slow_headers_and_bodies_are_cut_off_while_others_are_served(open_server: LiveServer) -> None:
    started = time.monotonic()
    headers, bodies = [], []
    for i in range(16):  # 32 slow connections from 16 addresses
        source = f"127.0.0.{10 + i}"
        headers.append(Trickle(connect(open_server.url, source),
                               b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"a"))
        bodies.append(Trickle(connect(open_server.url, source),
                              b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                              b"\r\nContent-Length: 4000\r\n\r\n" + json.dumps(CHAT).encode()[:-1], b" "))
    slow = headers + bodies
    assert httpx.get(open_server.url + "/v1/models", timeout=10).status_code == 200  # served meanwhile...
    assert not any(t.step() for t in slow), "a slow connection was cut off before its deadline"  # ...while all are held
    deadline = max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S)
    with ThreadPoolExecutor(1) as pool:  # a completion on another connection, while the slow ones trickle on
        completion = pool.submit(httpx.post, open_server.url + "/v1/chat/completions", json=CHAT, timeout=60)
        wait_until(lambda: all(t.step() for t in slow), timeout_s=deadline + 5, interval_s=0.05,
                   what="the server to close every slow connection")
        assert completion.result(timeout=60).status_code == 200, completion.result().text
    for trickle, deadline_s in [(t, HEADER_TIMEOUT_S) for t in headers] + [(t, BODY_TIMEOUT_S) for t in bodies]:
        assert trickle.closed_at is not None
        held = trickle.closed_at - trickle.opened_at
        assert deadline_s - 0.3 <= held <= deadline_s + 3, held
        assert trickle.answer.startswith(b"HTTP/1.1 408 "), trickle.answer[:200]
        assert b"request_timeout" in trickle.answer and b"connection: close" in trickle.answer.lower()
    assert time.monotonic() - started < deadline + 30


def test_a_connection_past_the_cap_per_address_gets_429_and_others_are_served(open_server: LiveServer) -> None:
    held = [connect(open_server.url, "127.0.0.2") for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
    try:
        for sock in held:  # each is served, then stays open (keep-alive)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_response(sock)[0] == 200

        def models(source: str) -> tuple[int, bytes]:
            with connect(open_server.url, source) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                status, raw = read_response(sock)
                if b"connection: close" in raw.lower():
                    assert sock.recv(1) == b"", "the connection should be closed after the answer"
                return status, raw

        status, raw = models("127.0.0.2")
        assert status == 429, raw[:300]
        error = json.loads(raw.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "too_many_connections" and str(MAX_CONNECTIONS_PER_CLIENT) in error["message"]
        assert b"retry-after: 1" in raw.lower() and b"connection: close" in raw.lower()
        assert models("127.0.0.3")[0] == 200  # another address is not affected
        held.pop().close()
        wait_until(lambda: models("127.0.0.2")[0] == 200, timeout_s=5, what="a freed place to be given again")
        for _ in range(MAX_CONNECTIONS_PER_CLIENT + 1):  # upgraded connections leave no place taken behind
            with connect(open_server.url, "127.0.0.4") as sock:
                sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                             b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
                read_response(sock)
        wait_until(lambda: models("127.0.0.4")[0] == 200, timeout_s=5, what="a connection after the upgrades")
    finally:
        for sock in held:
            sock.close()
