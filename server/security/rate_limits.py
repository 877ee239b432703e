"""Per-key limits kept in Redis, so that they hold across every gateway sharing it.

    requests per minute   a fixed window: `INCR` + `EXPIRE` on `keys.requests_per_minute(kid, minute)`
    tokens per minute     a fixed window: `GET` on admission, refused once the window holds `limit`
                          tokens or more; the request's usage (`usage.TokenUsage`, prompt +
                          completion) `INCRBY`'d into the window current when the response is over
    concurrent requests   a counter: `INCR` on admission (undone past the limit), `DECR` when the
                          response is over; its TTL (refreshed on every admission) bounds what a
                          gateway that died mid-request can leave behind

A token limit is checked twice: before the body is read (the window already full: 429), and once
the request is parsed, when the serving layer reserves the most it may use (`reserve`: prompt
estimate + `n` x `max_tokens`, atomically added to the window if it fits, else 429). When the
response is over, the window is corrected by what was really used (or, if the minute turned, the
use is charged to the new one). So one request cannot take the window far past its limit. Concurrent
requests of one key can overshoot together; the concurrency limit bounds by how much.

Keys are named in `server.queue.keys` by `api_keys.key_id()`, never by the API key. When Redis
cannot be reached the limits are not applied (the request is let through and a warning logged,
at most every 30 s): the queue itself answers 503 then, and hosted models keep being served.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import RateLimitError
from server.queue import keys
from server.security.usage import TokenUsage

log = logging.getLogger("slm.security")

WINDOW_S = 60
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

# KEYS[1] = tokens window; ARGV = tokens, limit, ttl. Adds them if they fit; returns the window's use then.
_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 - used end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return used + tonumber(ARGV[1])
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
    reset_s: int = 0
    limit: int = 0
    remaining: int = 0
    token_limit: int = 0
    tokens_remaining: int = 0
    usage: TokenUsage | None = None  # set when the key's tokens are limited
    reserved_window: int = -1  # the minute the reservation was added to

    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        reset = f"{self.reset_s}s".encode()
        if self.limit:
            out += [(b"x-ratelimit-limit-requests", str(self.limit).encode()),
                    (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
                    (b"x-ratelimit-reset-requests", reset)]
        if self.token_limit:
            out += [(b"x-ratelimit-limit-tokens", str(self.token_limit).encode()),
                    (b"x-ratelimit-remaining-tokens", str(self.tokens_remaining).encode()),
                    (b"x-ratelimit-reset-tokens", reset)]
        return out


class RateLimiter:
    def __init__(self, redis_url: str, *, rpm: int, concurrency: int, tpm: int = 0, timeout_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis_url = redis_url
        self.clock = clock  # unix seconds; the windows are its minutes
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
            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
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
            if self.rpm or self.tpm:
                await self._check_windows(admission)
            if self.concurrency:
                n = await self._client().eval(_ACQUIRE, 1, keys.concurrent_requests(kid), self.concurrency,
                                              CONCURRENCY_TTL_S)
                if not int(n):
                    raise RateLimitError(
                        f"Too many concurrent requests for this API key (limit {self.concurrency}); "
                        "wait for one to finish.",
                        retry_after=1, headers=_as_str(admission.headers()), code="concurrency_limit_exceeded",
                    )
                admission.holds_slot = True
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
        return admission

    async def _check_windows(self, admission: Admission) -> None:
        """One round trip: count this request in its minute, read the tokens used in it."""
        now = self.clock()
        window = int(now // WINDOW_S)
        admission.reset_s = max(1, math.ceil((window + 1) * WINDOW_S - now))
        pipe = self._client().pipeline(transaction=True)
        if self.rpm:
            counter = keys.requests_per_minute(admission.kid, window)
            pipe.incr(counter)
            pipe.expire(counter, 2 * WINDOW_S)
        if self.tpm:
            pipe.get(keys.tokens_per_minute(admission.kid, window))
        replies: list[Any] = await pipe.execute()
        count = int(replies[0]) if self.rpm else 0
        used = int(replies[-1] or 0) if self.tpm else 0
        if self.rpm:
            admission.limit = self.rpm
            admission.remaining = max(0, self.rpm - count)
        if self.tpm:
            admission.token_limit = self.tpm
            admission.tokens_remaining = max(0, self.tpm - used)
        if self.rpm and count > self.rpm:
            raise RateLimitError(
                f"Rate limit reached for this API key: {self.rpm} requests per minute; "
                f"try again in {admission.reset_s}s.",
                retry_after=admission.reset_s, headers=_as_str(admission.headers()), code="rate_limit_exceeded",
            )
        if self.tpm and used >= self.tpm:
            raise RateLimitError(
                f"Rate limit reached for this API key: {self.tpm} tokens per minute, {used} used; "
                f"try again in {admission.reset_s}s.",
                retry_after=admission.reset_s, headers=_as_str(admission.headers()), code="tokens_limit_exceeded",
            )

    async def reserve(self, admission: Admission, tokens: int) -> None:
        """Add `tokens` to the key's window now if they fit under the limit, else RateLimitError."""
        now = self.clock()
        window = int(now // WINDOW_S)
        reset = max(1, math.ceil((window + 1) * WINDOW_S - now))
        try:
            result = int(await self._client().eval(_RESERVE, 1, keys.tokens_per_minute(admission.kid, window),
                                                    tokens, self.tpm, 2 * WINDOW_S))
        except (RedisError, OSError) as exc:
            self._unavailable(exc)
            return
        if result >= 0:
            admission.reserved_window = window
            admission.tokens_remaining = max(0, self.tpm - result)
            return
        used = -1 - result
        if tokens > self.tpm:
            message = (f"This request may use up to {tokens} tokens (its prompt, estimated, plus n x max_tokens), "
                       f"more than this API key's limit of {self.tpm} tokens per minute; lower max_tokens or n.")
        else:
            message = (f"Rate limit reached for this API key: {self.tpm} tokens per minute, {used} used, "
                       f"this request may use up to {tokens}; try again in {reset}s.")
        # the response carries the key's x-ratelimit-* headers already (the middleware adds them)
        raise RateLimitError(message, retry_after=reset, code="tokens_limit_exceeded")

    async def finish(self, admission: Admission) -> None:
        """The response is over: correct the key's window by the tokens it used, free its slot."""
        tokens, reserved = admission.usage.settle() if admission.usage is not None else (0, 0)
        window = int(self.clock() // WINDOW_S)
        if reserved and admission.reserved_window == window:
            tokens -= reserved  # the window holds the reservation: correct it by what was used
        try:
            if tokens:
                key = keys.tokens_per_minute(admission.kid, window)
                pipe = self._client().pipeline(transaction=True)
                pipe.incrby(key, tokens)
                pipe.expire(key, 2 * WINDOW_S)
                await pipe.execute()
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
