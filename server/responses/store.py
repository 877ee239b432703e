"""Stored responses in Redis: any gateway sharing the Redis can read, continue or delete one.

Each response is one JSON value under `slm:responses:{owner}:{id}` (`owner`: the API key's id, so
another key finds nothing: 404), holding the response object and the input items of its whole
conversation (earlier turns' inputs and outputs included), so `previous_response_id` rebuilds it
from one read, and a conversation outlives any one link's expiry. Every value expires after the
TTL (`SLM_RESPONSES_TTL_S`). What they hold together is bounded (`SLM_RESPONSES_MAX_BYTES`): a
Lua script drops the sizes of expired entries from the total, and refuses a write that would pass
the cap rather than evict a live conversation (Redis's own eviction would drop queue entries too).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from server.queue import keys

RECORD_OVERHEAD = 2048  # bytes: a response object with a short answer, beside its input items

# KEYS: record, expiry zset, sizes hash, total. ARGV: ttl ms, cap bytes, payload. 1 stored, 0 over the cap.
_SAVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local size = tonumber(redis.call('HGET', KEYS[3], gone) or '0')
  redis.call('HDEL', KEYS[3], gone)
  redis.call('DECRBY', KEYS[4], size)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local old = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0')
local total = tonumber(redis.call('GET', KEYS[4]) or '0') - old
local size = string.len(ARGV[3])
if total + size > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
redis.call('SET', KEYS[4], total + size)
return 1
"""

# KEYS: record, expiry zset, sizes hash, total. Returns 1 when there was a record.
_DELETE = """
local size = tonumber(redis.call('HGET', KEYS[3], KEYS[1]) or '0')
redis.call('HDEL', KEYS[3], KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
if size > 0 then redis.call('DECRBY', KEYS[4], size) end
return redis.call('DEL', KEYS[1])
"""


class ResponseStore:
    def __init__(self, client: aioredis.Redis, *, ttl_s: int, max_bytes: int) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._save = client.register_script(_SAVE)
        self._delete = client.register_script(_DELETE)

    @staticmethod
    def _keys(owner: str, response_id: str) -> list[str]:
        return [keys.stored_response(owner, response_id), keys.stored_responses_expiry(),
                keys.stored_responses_sizes(), keys.stored_responses_total()]

    async def has_room(self, items: list[dict[str, Any]]) -> bool:
        """Whether a response on `items` is likely to fit under the cap (checked before generating it):
        the items' size plus `RECORD_OVERHEAD` for the response object and a short answer. A longer
        answer that does not fit is not stored, and its response says so (`store: false`)."""
        need = len(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()) + RECORD_OVERHEAD
        total = await self.client.get(keys.stored_responses_total())
        return int(total or 0) + need <= self.max_bytes

    async def save(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]]) -> bool:
        """Store (or replace) a response; False when it would pass the cap (nothing written)."""
        payload = json.dumps({"response": response, "items": items}, separators=(",", ":"), ensure_ascii=False)
        stored = await self._save(keys=self._keys(owner, response["id"]),
                                  args=[self.ttl_s * 1000, self.max_bytes, payload.encode()])
        return bool(stored)

    async def load(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """`{"response": ..., "items": [...]}`, or None when unknown, expired or another key's."""
        raw = await self.client.get(keys.stored_response(owner, response_id))
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        return record

    async def delete(self, owner: str, response_id: str) -> bool:
        return bool(await self._delete(keys=self._keys(owner, response_id), args=[]))
