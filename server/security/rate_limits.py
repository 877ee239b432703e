"""Per-key limits kept in Redis, so that they hold across every gateway sharing it.

    requests per minute   a sliding window (`windows`): admitted while fewer than `limit` requests
                          were admitted in the last `window_s` seconds (60 unless
                          `SLM_RATE_LIMIT_WINDOW_S` says otherwise), so no such interval admits more
    tokens per minute     a sliding window of charges: refused while the tokens charged in the last
                          `window_s` seconds reach `limit`; the request's usage (`usage.TokenUsage`,
                          prompt + completion) is charged when the response is over
    concurrent requests   a counter: `INCR` on admission (undone past the limit), `DECR` when the
                          response is over; its TTL (refreshed on every admission) bounds what a
                          gateway that died mid-request can leave behind

A token limit is checked twice: before the body is read (the window already holds the limit:
429), and once the request is parsed, when the serving layer reserves the most it may use
(`reserve`: prompt estimate + `n` x `max_tokens`, added to the window as a charge of its own if it
fits, atomically, else 429). When the response is over the reservation leaves the window and what
was really used is charged in its place. So one request cannot take the window past its limit;
concurrent requests of one key admitted before their reservations can overshoot together; the
concurrency limit bounds by how much. Concurrent
requests of one key can overshoot together; the concurrency limit bounds by how much.

`x-ratelimit-reset-*` and `Retry-After` are the whole seconds until a slot frees: until the oldest
request in the window leaves it (refused: until the count falls under the limit), and for tokens
until the oldest charge leaves (refused: until what stays is under the limit). Both windows are
on Redis's clock (`TIME`), never the gateway's.

Keys are named in `server.queue.keys` by `api_keys.key_id()`, never by the API key. When Redis
cannot be reached the limits are not applied (the request is let through and a warning logged,
at most every 30 s): the queue itself answers 503 then, and hosted models keep being served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import RateLimitError
from server.queue import keys
from server.redis_connect import RedisTarget
from server.security.usage import TokenUsage
from server.security.windows import Reading, SlidingWindows

log = logging.getLogger("slm.security")

WINDOW_S = 60.0  # the default window; `SLM_RATE_LIMIT_WINDOW_S`
CONCURRENCY_TTL_S = 3600
WARN_EVERY_S = 30.0

# KEYS[1] = counter; ARGV = limit, ttl. Returns the new count, or 0 when refused (nothing held).
_ACQUIRE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return n
"""

# KEYS[1] = counter. Never leaves it below zero (it may have expired while the request ran).
_RELEASE = """
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
"""


@dataclass
class Admission:
    """What one admitted request holds, and what its `x-ratelimit-*` headers say."""

    kid: str
    holds_slot: bool = False
    reset_s: int = 0  # until a request slot frees
    tokens_reset_s: int = 0  # until tokens free up
    limit: int = 0
    remaining: int = 0
    token_limit: int = 0
    tokens_remaining: int = 0
    usage: TokenUsage | None = None  # set when the key's tokens are limited
    reservations: list[str] = field(default_factory=list)  # its charges held in advance in the window

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        if self.limit:
            out += [(b"x-ratelimit-limit-requests", str(self.limit).encode()),
                    (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
                    (b"x-ratelimit-reset-requests", f"{self.reset_s}s".encode())]
        if self.token_limit:
            out += [(b"x-ratelimit-limit-tokens", str(self.token_limit).encode()),
                    (b"x-ratelimit-remaining-tokens", str(self.tokens_remaining).encode()),
                    (b"x-ratelimit-reset-tokens", f"{self.tokens_reset_s}s".encode())]
        return out


class RateLimiter:
    def __init__(self, redis: str | RedisTarget, *, rpm: int, concurrency: int, tpm: int = 0,
                 timeout_s: float = 1.0, window_s: float = WINDOW_S) -> None:
        self.target = RedisTarget(url=redis) if isinstance(redis, str) else redis
        self.windows = SlidingWindows(window_s)
        self.rpm = rpm
        self.tpm = tpm
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._redis: aioredis.Redis | None = None
        self._warned_at = -WARN_EVERY_S

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.tpm or self.concurrency)

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = self.target.async_client(socket_timeout=self.timeout_s,
                                                   socket_connect_timeout=self.timeout_s)
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _unavailable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("rate limits not applied: redis unavailable (%s)", type(exc).__name__)

    async def admit(self, kid: str) -> Admission:
        """Count one request of key `kid`; raises `RateLimitError` past a limit."""
        admission = Admission(kid)
        if self.tpm:
            admission.usage = TokenUsage(lambda tokens: self.reserve(admission, tokens))
        try:
            reading = await self._check_windows(admission) if self.rpm or self.tpm else None
            if self.concurrency:
                n = await self._client().eval(_ACQUIRE, 1, keys.concurrent_requests(kid), self.concurrency,
                                              CONCURRENCY_TTL_S)
                if not int(n):
                    if reading is not None and self.rpm:  # not admitted after all: not counted
                        await self.windows.forget(self._client(), kid, reading)
                    raise RateLimitError(
                        f"Too many concurrent requests for this API key (limit {self.concurrency}); "
                        "wait for one to finish.",
                        retry_after=1, headers=_as_str(admission.headers()), code="concurrency_limit_exceeded",
                    )
                admission.holds_slot = True
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
        return admission

    async def _check_windows(self, admission: Admission) -> Reading:
        """One script: count this request in the key's window unless a limit is reached, read its tokens."""
        reading = await self.windows.admit(self._client(), admission.kid, rpm=self.rpm, tpm=self.tpm)
        if self.rpm:
            admission.limit = self.rpm
            admission.remaining = max(0, self.rpm - reading.requests)
            admission.reset_s = reading.seconds(reading.requests_free_s)
        if self.tpm:
            admission.token_limit = self.tpm
            admission.tokens_remaining = max(0, self.tpm - reading.tokens)
            admission.tokens_reset_s = reading.seconds(reading.tokens_free_s)
        per = self._per()
        if reading.refused_by == "requests":
            wait = max(1, admission.reset_s)
            raise RateLimitError(
                f"Rate limit reached for this API key: {self.rpm} requests {per}; try again in {wait}s.",
                retry_after=wait, headers=_as_str(admission.headers()), code="rate_limit_exceeded",
            )
        if reading.refused_by == "tokens":
            wait = max(1, admission.tokens_reset_s)
            raise RateLimitError(
                f"Rate limit reached for this API key: {self.tpm} tokens {per}, {reading.tokens} used; "
                f"try again in {wait}s.",
                retry_after=wait, headers=_as_str(admission.headers()), code="tokens_limit_exceeded",
            )
        return reading

    def _per(self) -> str:
        """How the limits' messages name the window."""
        return "per minute" if self.windows.window_s == 60 else f"per {self.windows.window_s:g} s"

    async def reserve(self, admission: Admission, tokens: int) -> None:
        """Hold `tokens` in the key's window now if they fit under the limit, else RateLimitError."""
        try:
            held = await self.windows.reserve(self._client(), admission.kid, tokens, tpm=self.tpm)
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
            return
        if held.member is not None:
            admission.reservations.append(held.member)
            admission.tokens_remaining = max(0, self.tpm - held.tokens)
            return
        per = self._per()
        wait = max(1, held.seconds())
        if tokens > self.tpm:
            message = (f"This request may use up to {tokens} tokens (its prompt, estimated, plus n x max_tokens), "
                       f"more than this API key's limit of {self.tpm} tokens {per}; lower max_tokens or n.")
        else:
            message = (f"Rate limit reached for this API key: {self.tpm} tokens {per}, {held.tokens} used, "
                       f"this request may use up to {tokens}; try again in {wait}s.")
        # the response carries the key's x-ratelimit-* headers already (the middleware adds them)
        raise RateLimitError(message, retry_after=wait, code="tokens_limit_exceeded")

    async def finish(self, admission: Admission) -> None:
        """The response is over: its reservations leave the key's window and the tokens it used are
        charged, now; its concurrency slot is freed."""
        tokens = admission.usage.settle()[0] if admission.usage is not None else 0
        held, admission.reservations = admission.reservations, []
        try:
            if tokens or held:
                await self.windows.settle(self._client(), admission.kid, held, tokens)
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
        if admission.holds_slot:
            admission.holds_slot = False
            try:
                await self._client().eval(_RELEASE, 1, keys.concurrent_requests(admission.kid))
            except (RedisError, OSError) as exc:
                self._unavailable(exc)


def _as_str(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}
