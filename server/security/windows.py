"""Sliding windows in Redis for the per-key request and token limits, on Redis's clock.

    requests   a sliding log: a sorted set `keys.request_window(kid)` holding one member per admitted
               request, scored by the Redis time (µs) it was admitted at
    tokens     a sliding log of charges: a sorted set `keys.token_window(kid)` holding one member
               `<nonce>:<tokens>` per reservation (the most a running request may use) and per
               finished request (what it used, its reservations taken out), scored by the Redis
               time it was charged at, and its running total under `keys.token_window_total(kid)`

An entry counts while it is at most `window` old (`score >= now - window`), so no interval of
`window` seconds, closed at both ends, holds more than `limit` admitted requests: at the last
admission inside any such interval, every earlier one in it was still counted, and that admission
was let in only while fewer than `limit` were. A fixed window lets twice the limit through around
its boundary; this does not. A request refused is not counted.

Tokens are only known when a request ends, so admission reads the tokens charged within the
window and refuses once they reach the limit, and a parsed request reserves the most it may use
(`reserve`: held only if the window stays within the limit with it); `settle` swaps the
reservation for the real use when it ends (`rate_limits` says what can still overshoot).

Every read and write is one Lua script: it reads `TIME` itself, so gateways whose clocks disagree
still agree on the window, and it is atomic, so gateways sharing the Redis cannot both take the last
slot. Old entries are removed as each script runs (`ZREMRANGEBYSCORE`), the total is kept by
subtracting what left, and every key expires `window + 1 s` after its last write (PEXPIRE), so a key
that stops sending leaves nothing behind. Needs Redis >= 5 (scripts that write after reading TIME).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from server.queue import keys

KEY_SLACK_MS = 1000  # keys outlive their newest entry's window by this much

# Shared by both scripts: the clock, and the token log trimmed to the window with its total.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local oldest_kept = now - window  -- entries scored below this have left the window
local ttl_ms = math.ceil(window / 1000) + SLACK_MS

local function charge_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

-- the tokens charged within the window, after removing older charges
local function tokens_in_window(log, total_key)
  local gone = redis.call('ZRANGEBYSCORE', log, '-inf', oldest_kept - 1)
  local stored = redis.call('GET', total_key)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', log, '-inf', oldest_kept - 1)
  end
  if redis.call('ZCARD', log) == 0 then
    redis.call('DEL', total_key)
    return 0
  end
  if not stored then  -- lost (never, while both expire together): recount
    local total = 0
    for _, member in ipairs(redis.call('ZRANGE', log, 0, -1)) do total = total + charge_of(member) end
    redis.call('SET', total_key, total, 'PX', ttl_ms)
    return total
  end
  local freed = 0
  for _, member in ipairs(gone) do freed = freed + charge_of(member) end
  if freed > 0 then return redis.call('DECRBY', total_key, freed) end  -- DECRBY keeps the TTL
  return tonumber(stored)
end

-- µs until enough of the oldest charges leave for what stays of `used` to be at most `room`
local function free_after(log, used, room)
  local left = used
  local charges = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
  for i = 1, #charges, 2 do
    left = left - charge_of(charges[i])
    if left <= room then return tonumber(charges[i + 1]) + window + 1 - now end
  end
  return window
end
""".replace("SLACK_MS", str(KEY_SLACK_MS))

# KEYS = request log, token log, token total; ARGV = window µs, request limit, token limit (0 = off),
# member. Admits (adds the member to the request log) unless a limit is reached.
# Returns {refused (0, 1 = requests, 2 = tokens), requests counted, µs until a request slot frees,
#          tokens in the window, µs until tokens free up (0: none counted)}.
_ADMIT = _PRELUDE + """
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
local count, used, refused = 0, 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', oldest_kept - 1)
  count = redis.call('ZCARD', KEYS[1])
  if count >= rpm then refused = 1 end
end
if tpm > 0 then
  used = tokens_in_window(KEYS[2], KEYS[3])
  if refused == 0 and used >= tpm then refused = 2 end
end
if refused == 0 and rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  count = count + 1
end

-- a request slot frees when the entry whose leaving brings the count below the limit leaves
local requests_free = 0
if rpm > 0 and count > 0 then
  local at = redis.call('ZRANGE', KEYS[1], math.max(0, count - rpm), math.max(0, count - rpm), 'WITHSCORES')
  requests_free = tonumber(at[2]) + window + 1 - now
end
-- tokens free up when the oldest charge leaves; past the limit, when enough have left to be under it
local tokens_free = 0
if tpm > 0 and used > 0 then tokens_free = free_after(KEYS[2], used, tpm - 1) end
return {refused, count, requests_free, used, tokens_free}
"""

# KEYS = token log, token total; ARGV = window µs, tokens (> 0), limit, nonce. Holds the tokens as a
# charge of their own if they fit under the limit. Returns {held (0/1), tokens in the window (with
# them, when held), µs until enough charges leave for them to fit (when not)}.
_RESERVE = _PRELUDE + """
local tokens = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local used = tokens_in_window(KEYS[1], KEYS[2])
if used + tokens <= limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. ARGV[2])
  local total = redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
  return {1, total, 0}
end
local free = window
if tokens <= limit then free = free_after(KEYS[1], used, limit - tokens) end
return {0, used, free}
"""

# KEYS = token log, token total; ARGV = window µs, tokens used (>= 0), nonce, reservation members...
# The reservations still in the window leave it; the tokens used are charged now. Returns the total.
_SETTLE = _PRELUDE + """
tokens_in_window(KEYS[1], KEYS[2])
local freed = 0
for i = 4, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then freed = freed + charge_of(ARGV[i]) end
end
if freed > 0 then redis.call('DECRBY', KEYS[2], freed) end
local used = tonumber(ARGV[2])
if used > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. ARGV[2])
  redis.call('INCRBY', KEYS[2], used)
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""

REFUSED_BY = {0: None, 1: "requests", 2: "tokens"}


@dataclass(frozen=True)
class Held:
    """What a reservation found: `member` (its charge in the log) when held, else None."""

    member: str | None
    tokens: int  # tokens in the window (with this reservation, when held)
    free_s: float  # until enough charges leave for it to fit (when not held)

    def seconds(self) -> int:
        return Reading.seconds(self.free_s)


@dataclass(frozen=True)
class Reading:
    """One key's windows as one admission found them (after counting it, when it was admitted)."""

    refused_by: str | None  # "requests", "tokens" or None (admitted)
    requests: int  # requests counted in the window
    requests_free_s: float  # until a request slot frees
    tokens: int  # tokens charged in the window
    tokens_free_s: float  # until tokens free up (0 when none are counted)
    member: str  # the request's entry in the request log

    @staticmethod
    def seconds(free_s: float) -> int:
        """Whole seconds to wait, rounded up (what `Retry-After` and `x-ratelimit-reset-*` say)."""
        return math.ceil(free_s - 1e-9) if free_s > 0 else 0


class SlidingWindows:
    """The request and token windows of every key, `window_s` seconds long, in one Redis."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.window_us = max(1, round(window_s * 1_000_000))

    async def admit(self, client: aioredis.Redis, kid: str, *, rpm: int, tpm: int) -> Reading:
        """Count one request of `kid` unless a limit (0 = off) is reached; read both windows."""
        member = secrets.token_hex(8)
        reply: Any = await client.eval(
            _ADMIT, 3, keys.request_window(kid), keys.token_window(kid), keys.token_window_total(kid),
            self.window_us, rpm, tpm, member,
        )
        refused, count, requests_free, used, tokens_free = (int(v) for v in reply)
        return Reading(REFUSED_BY[refused], count, requests_free / 1e6, used, tokens_free / 1e6, member)

    async def forget(self, client: aioredis.Redis, kid: str, reading: Reading) -> None:
        """Take back an admission that was refused afterwards (by the concurrency limit)."""
        await client.zrem(keys.request_window(kid), reading.member)

    async def reserve(self, client: aioredis.Redis, kid: str, tokens: int, *, tpm: int) -> Held:
        """Hold `tokens` in `kid`'s token window now if the window stays within `tpm` with them."""
        nonce = secrets.token_hex(8)
        reply: Any = await client.eval(_RESERVE, 2, keys.token_window(kid), keys.token_window_total(kid),
                                       self.window_us, tokens, tpm, nonce)
        held, total, free = (int(v) for v in reply)
        return Held(f"{nonce}:{tokens}" if held else None, total, free / 1e6)

    async def settle(self, client: aioredis.Redis, kid: str, reservations: list[str], tokens: int) -> int:
        """Take `reservations` out of `kid`'s token window and charge the `tokens` used, now."""
        reply: Any = await client.eval(_SETTLE, 2, keys.token_window(kid), keys.token_window_total(kid),
                                       self.window_us, tokens, secrets.token_hex(8), *reservations)
        return int(reply)
