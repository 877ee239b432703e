"""The gateway's front door, as a pure ASGI middleware: Host, API keys, content type, limits, body.

For each HTTP request, in this order:

0. **Host** — outside the allow-list of `hosts` (an open server serves localhost, its bind host
   and IP literals): 400 `invalid_host`, against DNS rebinding. `/health`, `/ready` and `/metrics`
   skip the check: Kubernetes probes and Prometheus name the pod by IP or by its own name.
1. **API key** — when keys are configured, every path but the open ones (`/health`, `/ready`,
   `/metrics` unless `SLM_PROTECT_METRICS`, `/`, `/static/*`, the API docs) needs
   `Authorization: Bearer <key>` or `x-api-key: <key>` (Anthropic's clients send that), exactly one.
   The scheme is case-insensitive (RFC 7235), the key is not.
   The decision reads `scope["path"]`, never a URL rebuilt from `Host` or `X-Forwarded-*`.
2. **Content-Length** — above `SLM_MAX_BODY_BYTES`: 413 before reading any of the body.
   **Content-Type** — a request to `/v1/*` with a body must say `application/json` (or
   `application/<x>+json`; parameters such as `charset` allowed), else 400
   `unsupported_content_type`: a web page can send `text/plain` (or no type) without a CORS
   preflight, never JSON, so no page elsewhere can post to the API from a visitor's browser.
3. **Per-key limits** — requests and tokens per minute (sliding windows), concurrent requests,
   in Redis (`rate_limits`). A token-limited request gets a `usage.TokenUsage` in its scope's
   `state`, which the route hands explicitly to the serving layer, which fills it; its total is
   charged to the key when the response is over.
4. **Body** — read here, counting; 413 as soon as the count passes the limit (chunked bodies
   included); 408 `request_timeout` when it is not all in within `SLM_BODY_TIMEOUT_S` (the
   headers' own deadline is the connection's, `server.http_protocol`); then handed to the app in
   one piece.

Admitted requests carry their key's `x-ratelimit-*` headers (requests and tokens) on the response.

Every refusal is one of `server.errors`' classes in the envelope of the API the path names
(`server.envelopes`: Anthropic's under `/v1/messages`, else OpenAI's). A refusal sent before
the body was read says `Connection: close`, so the rest of a hostile upload is not drained.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.envelopes import render
from server.errors import (
    AuthenticationError,
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    SlmError,
)
from server.security import owner, usage
from server.security.api_keys import ApiKeys, key_id, mask
from server.security.hosts import HostPolicy
from server.security.rate_limits import Admission, RateLimiter
from server.settings import Settings

log = logging.getLogger("slm.security")

OPEN_PATHS = frozenset({"/", "/health", "/ready", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")
METRICS_PATH = "/metrics"
ANY_HOST_PATHS = frozenset({"/health", "/ready", METRICS_PATH})
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="slm-server"'}
NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header "
          "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key header.")


@dataclass
class SecurityConfig:
    keys: ApiKeys
    max_body_bytes: int
    protect_metrics: bool = False
    limiter: RateLimiter | None = field(default=None, repr=False)
    hosts: HostPolicy | None = None  # None: any Host
    body_timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SecurityConfig:
        """Load the keys (raising `ApiKeyConfigError`) and say loudly when the API is open."""
        keys = ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
        limiter = None
        limited = settings.rate_limit_rpm or settings.rate_limit_tpm or settings.rate_limit_concurrency
        if keys and settings.redis_configured and limited:
            limiter = RateLimiter(settings.redis_target(), rpm=settings.rate_limit_rpm, tpm=settings.rate_limit_tpm,
                                  concurrency=settings.rate_limit_concurrency, timeout_s=settings.redis_timeout_s,
                                  window_s=settings.rate_limit_window_s)
        hosts = HostPolicy.from_settings(settings, keys_configured=bool(keys))
        if keys:
            log.info("API keys: %d configured; /v1/* needs one", len(keys))
        else:
            log.warning(
                "NO API KEYS CONFIGURED: the API is OPEN. Anyone who can reach %s:%s can use every model "
                "(spending the keys of hosted providers), read the answers and see /v1/status. Web pages in "
                "a visitor's browser are held off only by the Host allow-list (%s) and by requiring a JSON "
                "Content-Type; connections per client address are capped at %s. "
                "Set SLM_API_KEYS or SLM_API_KEYS_FILE.", settings.host, settings.port,
                hosts.describe() if hosts is not None else "any host: SLM_ALLOWED_HOSTS=*",
                settings.max_connections_per_client or "no limit")
            if limited:
                log.warning("per-key rate limits are set but there are no API keys: they are not applied")
        return cls(keys, settings.max_body_bytes, settings.protect_metrics, limiter, hosts, settings.body_timeout_s)


class _BodyTooLarge(Exception):
    pass


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, config: SecurityConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, send)
            finally:
                if self.config.limiter is not None:
                    await self.config.limiter.close()
            return
        if scope["type"] == "websocket" and self.config.keys and self._needs_key(scope["path"]):
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers: list[tuple[bytes, bytes]] = scope["headers"]
        might_have_body = _may_have_body(headers)
        path: str = scope["path"]
        try:
            self._check_host(path, headers)
            kid = self._authenticate(path, headers)
            owner.put(scope, kid)
            length = _content_length(headers)
            if length is not None and length > self.config.max_body_bytes:
                raise _too_large(self.config.max_body_bytes)
            if might_have_body and path.startswith("/v1/"):
                _check_content_type(headers)
        except SlmError as exc:
            await reply(send, exc, path, close=might_have_body)
            return

        admission: Admission | None = None
        limiter = self.config.limiter
        try:
            if kid is not None and limiter is not None:
                try:
                    admission = await limiter.admit(kid)
                except SlmError as exc:
                    await reply(send, exc, path, close=might_have_body)
                    return
            if might_have_body:
                try:
                    receive = await self._buffer_body(receive)
                except _BodyTooLarge:
                    await reply(send, _too_large(self.config.max_body_bytes), path, close=True)
                    return
                except _BodyTimeout:
                    timeout = self.config.body_timeout_s
                    log.info("request body not received within %s s: 408, connection closed", timeout)
                    await reply(send, RequestTimeoutError(
                        f"The request body did not arrive within {timeout:g} s.", code="request_timeout"), path,
                        close=True)
                    return
                except _ClientGone:
                    return
            extra = admission.headers() if admission is not None else []
            if admission is not None and admission.usage is not None:
                usage.put(scope, admission.usage)
            if extra:
                send = _with_headers(send, extra)
            if admission is not None and limiter is not None:
                send = _settled_before_last_byte(send, limiter, admission)
            await self.app(scope, receive, send)
        finally:
            if admission is not None and limiter is not None:
                with anyio.CancelScope(shield=True):
                    await limiter.finish(admission)

    def _needs_key(self, path: str) -> bool:
        if path in OPEN_PATHS or (path.startswith(OPEN_PREFIXES) and not _DOT_SEGMENT.search(path)):
            return False
        return not (path == METRICS_PATH and not self.config.protect_metrics)

    def _check_host(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        hosts = self.config.hosts
        if hosts is None or path in ANY_HOST_PATHS:
            return
        values = [v for k, v in headers if k.lower() == b"host"]
        if not hosts.allows(values):
            shown = b", ".join(values).decode("latin-1")[:200]
            raise InvalidRequestError(
                f"This server does not serve the host {shown!r} (the Host header). Its operator may add it "
                "to SLM_ALLOWED_HOSTS.", code="invalid_host")

    def _authenticate(self, path: str, headers: list[tuple[bytes, bytes]]) -> str | None:
        """The key id of the request's valid key; None when the path is open or no keys are set."""
        keys = self.config.keys
        if not keys or not self._needs_key(path):
            return None
        credential = _presented_key(headers)
        matched = keys.identify(credential)
        if matched is None:
            shown = mask(credential.decode("latin-1"))
            raise AuthenticationError(f"Incorrect API key provided: {shown}.", headers=WWW_AUTHENTICATE)
        return key_id(matched)

    async def _buffer_body(self, receive: Receive) -> Receive:
        """Read the whole body (up to the limit) and return a `receive` that replays it."""
        chunks: list[bytes] = []
        total = 0
        limit = self.config.max_body_bytes
        with anyio.move_on_after(self.config.body_timeout_s) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                body: bytes = message.get("body", b"")
                total += len(body)
                if total > limit:
                    raise _BodyTooLarge
                chunks.append(body)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            raise _BodyTimeout
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay


def _presented_key(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The key of `Authorization: Bearer <key>` or of `x-api-key: <key>` (Anthropic's header): exactly
    one of them, once."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    api_keys = [v.strip() for k, v in headers if k.lower() == b"x-api-key"]
    if len(values) + len(api_keys) > 1:
        raise AuthenticationError("Send exactly one API key: one Authorization or one x-api-key header.",
                                  headers=WWW_AUTHENTICATE)
    if api_keys:
        if not api_keys[0]:
            raise AuthenticationError(NO_KEY, headers=WWW_AUTHENTICATE)
        return api_keys[0]
    if not values:
        raise AuthenticationError(NO_KEY, headers=WWW_AUTHENTICATE)
    scheme, _, credential = values[0].strip().partition(b" ")
    credential = credential.strip()
    if scheme.lower() != b"bearer" or not credential:
        raise AuthenticationError(NO_KEY, headers=WWW_AUTHENTICATE)
    return credential


class _ClientGone(Exception):
    pass


class _BodyTimeout(Exception):
    pass


def _check_content_type(headers: list[tuple[bytes, bytes]]) -> None:
    values = [v for k, v in headers if k.lower() == b"content-type"]
    media = values[0].partition(b";")[0].strip().lower() if len(values) == 1 else b""
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return
    got = repr(b", ".join(values).decode("latin-1")[:100]) if values else "no Content-Type"
    raise InvalidRequestError(
        f"The request body must be JSON, sent with 'Content-Type: application/json' (got {got}).",
        code="unsupported_content_type")


def _too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"The request body is larger than this server accepts ({limit} bytes).")


def _may_have_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding":
            return True
        if lname == b"content-length" and value.strip() not in (b"0", b""):
            return True
    return False


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    values = {v.strip() for k, v in headers if k.lower() == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not all(v.isdigit() for v in values):
        raise InvalidRequestError("The Content-Length header is invalid.", code="invalid_content_length")
    return int(values.pop())


def _settled_before_last_byte(send: Send, limiter: RateLimiter, admission: Admission) -> Send:
    """Charge the tokens and free the concurrency slot before the response's last byte leaves, so a
    client that sends its next request the moment this one ends is judged on an up-to-date count.
    (`finish` runs again when the response is over; it charges and frees only once.)"""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            with anyio.CancelScope(shield=True):
                await limiter.finish(admission)
        await send(message)

    return sender


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return sender


async def reply(send: Send, exc: SlmError, path: str, *, close: bool) -> None:
    """Send `exc` in the envelope of the API `path` names; `close`: say `Connection: close` (the body
    was not read)."""
    status, payload, extra = render(exc, path)
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
