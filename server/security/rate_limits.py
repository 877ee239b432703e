"""Per-key limits kept in Redis, so that they hold across every gateway sharing it.

    requests per minute   a fixed window: `INCR` + `EXPIRE` on `slm:ratelimit:rpm:<key id>:<minute>`
    concurrent requests   a counter: `INCR` on admission (undone past the limit), `DECR` when the
                          response is over; its TTL (refreshed on every admission) bounds what a
                          gateway that died mid-request can leave behind

Keys are named by `api_keys.key_id()`, never by the API key. When Redis cannot be reached the
limits are not applied (the request is let through and a warning logged, at most every 30 s):
the queue itself answers 503 then, and hosted models keep being served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.errors import RateLimitError

log = logging.getLogger("slm.security")

WINDOW_S = 60
CONCURRENCY_TTL_S = 3600
WARN_EVERY_S = 30.0


def rpm_key(kid: str, window: int) -> str:
    """Requests of one key in one minute (fixed window); expires after two windows."""
    return f"slm:ratelimit:rpm:{kid}:{window}"


def concurrency_key(kid: str) -> str:
    """Requests of one key being served now."""
    return f"slm:ratelimit:concurrent:{kid}"


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
    limit: int = 0
    remaining: int = 0
    reset_s: int = 0

    def headers(self) -> list[tuple[bytes, bytes]]:
        if not self.limit:
            return []
        return [
            (b"x-ratelimit-limit-requests", str(self.limit).encode()),
            (b"x-ratelimit-remaining-requests", str(self.remaining).encode()),
            (b"x-ratelimit-reset-requests", f"{self.reset_s}s".encode()),
        ]


class RateLimiter:
    def __init__(self, redis_url: str, *, rpm: int, concurrency: int, timeout_s: float = 1.0) -> None:
        self.redis_url = redis_url
        self.rpm = rpm
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self._redis: aioredis.Redis | None = None
        self._warned_at = -WARN_EVERY_S

    @property
    def enabled(self) -> bool:
        return bool(self.rpm or self.concurrency)

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
        try:
            if self.rpm:
                await self._count_request(admission)
            if self.concurrency:
                n = await self._client().eval(_ACQUIRE, 1, concurrency_key(kid), self.concurrency, CONCURRENCY_TTL_S)
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

    async def _count_request(self, admission: Admission) -> None:
        now = time.time()
        window = int(now // WINDOW_S)
        key = rpm_key(admission.kid, window)
        pipe = self._client().pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 2 * WINDOW_S)
        count, _ = await pipe.execute()
        admission.limit = self.rpm
        admission.remaining = max(0, self.rpm - int(count))
        admission.reset_s = max(1, int((window + 1) * WINDOW_S - now + 0.999))
        if int(count) > self.rpm:
            raise RateLimitError(
                f"Rate limit reached for this API key: {self.rpm} requests per minute; "
                f"try again in {admission.reset_s}s.",
                retry_after=admission.reset_s, headers=_as_str(admission.headers()), code="rate_limit_exceeded",
            )

    async def release(self, admission: Admission) -> None:
        if not admission.holds_slot:
            return
        admission.holds_slot = False
        try:
            await self._client().eval(_RELEASE, 1, concurrency_key(admission.kid))
        except (RedisError, OSError) as exc:
            self._unavailable(exc)


def _as_str(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in headers}
