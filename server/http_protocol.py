"""Connection guards uvicorn lacks: a deadline on a request's headers, a cap on connections per client.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that
sends its headers a byte at a time (or nothing at all after connecting) is held for ever, and so
is any number of them. `GatewayHttpProtocol` is uvicorn's httptools protocol with two additions:

- **Header deadline** (`SLM_HEADER_TIMEOUT_S`): a request's headers must be complete within it,
  counted from the connection's opening or from the first byte of a later request on it. Past
  it the connection gets a 408 `request_timeout` and is closed. (If an earlier response on the
  connection is still being sent, that one finishes and the connection closes after it.) The
  body's deadline is kept where the body is read, in `server.security.middleware`.
- **Connections per client address** (`SLM_MAX_CONNECTIONS_PER_CLIENT`, open servers only): a
  connection beyond the cap is answered 429 `too_many_connections` (with `Retry-After`) as soon
  as its headers arrive, and closed; the ones already open are untouched.

`server.http_server.GatewayServer` installs it; its limits hang on the app (`app.state.connection_limits`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from server.errors import RateLimitError, RequestTimeoutError, SlmError
from server.security.middleware import reply
from server.settings import Settings

log = logging.getLogger("slm.gateway")


@dataclass
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_per_client: int = 0  # 0: no cap
    open: Counter[str] = field(default_factory=Counter)  # connections held, by client address
    capped: set[str] = field(default_factory=set)  # addresses at the cap (logged once until under it again)

    @classmethod
    def from_settings(cls, settings: Settings, *, keys_configured: bool) -> ConnectionLimits:
        """With API keys there is no cap per address: keys carry their own limits, and many clients
        behind one NAT or proxy would share one address."""
        cap = 0 if keys_configured else settings.max_connections_per_client
        return cls(settings.header_timeout_s, cap)

    def admit(self, address: str) -> bool:
        if self.open[address] >= self.max_per_client:
            if address not in self.capped:
                self.capped.add(address)
                log.warning("client %s holds %d connections (SLM_MAX_CONNECTIONS_PER_CLIENT): more get 429",
                            address, self.max_per_client)
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]
        if self.open[address] < self.max_per_client:
            self.capped.discard(address)


def connection_limits(app: object) -> ConnectionLimits:
    """The limits `server.app.create_app` put on its app; the defaults (no cap) for another app."""
    limits = getattr(getattr(app, "state", None), "connection_limits", None)
    return limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()


class _TooManyConnections:
    """The ASGI app a connection over the cap is served by: one 429, then the connection closes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await reply(send, RateLimitError(
            f"Too many open connections from your address (at most {self.limit}); close some and retry.",
            code="too_many_connections", retry_after=1), scope.get("path", ""), close=True)


def raw_response(exc: SlmError) -> bytes:
    """`exc` in the OpenAI envelope as a whole HTTP/1.1 response that closes the connection."""
    body = json.dumps(exc.to_body()).encode()
    head = (f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = connection_limits(config.app)
        self.header_deadline: asyncio.TimerHandle | None = None
        self.counted: str | None = None  # the address this connection counts against

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None and self.limits.max_per_client:
            if self.limits.admit(address):
                self.counted = address
            else:
                self.app = _TooManyConnections(self.limits.max_per_client)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.counted is not None:
            self.limits.release(self.counted)
            self.counted = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # the connection passes to another protocol, whose end this one never hears of
        self._disarm()
        if self.counted is not None:
            self.limits.release(self.counted)
            self.counted = None
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_deadline is None:  # a later request on a kept-alive connection: its first byte
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self.header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _headers_too_slow(self) -> None:
        self.header_deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # as uvicorn's own shutdown does: close once this response is sent
            return
        log.debug("request headers from %s not received within %s s: 408, connection closed",
                  self.client, self.limits.header_timeout_s)
        timeout = self.limits.header_timeout_s
        self.transport.write(raw_response(RequestTimeoutError(
            f"The request headers did not arrive within {timeout:g} s.")))
        self.transport.close()
