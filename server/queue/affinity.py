"""Cache-aware dispatch: a conversation's next turn goes to the worker that holds its prompt prefix.

A worker keeps each slot's KV cache after a request ends, so the next turn of a conversation evaluates
only its new tokens (36x faster on a ~1,300-token document), but only on the worker that served the
previous turn. The gateway does not tokenize, so prefixes are named by what it has:

    fingerprints   a chain of short hashes over a chat's messages (each message's canonical JSON, seeded
                   with the tools, which the template renders first), one per prefix of the list; or over
                   a completion prompt in chunks of `PROMPT_CHUNK_CHARS`. Only prefixes of at least
                   `MIN_PREFIX_CHARS` count: shorter ones cost little to evaluate again.

A worker computes the same fingerprints for every request it admits and publishes those of what its
slots hold (`keys.worker_prefixes`, a set refreshed with its heartbeat). Admission (`ADMIT`, one Lua
script: atomic, one round trip, as before) adds the job to the own stream of the live, undrained worker
holding the job's longest published prefix when that worker has a free slot (slots less its pending
entries on the shared stream less its own stream's length), else to the model's shared stream; but when
a free worker's free slots all keep other conversations (the slot it took would lose one) while another
worker has a slot keeping nothing to spare, a job no worker holds goes to that one's own stream: a burst
of new conversations then fills empty slots before it overwrites a conversation whose next turn may be
on its way (with the shared stream, whichever worker read first took it).

A worker reads its own stream before the shared one (`server/worker/intake.py`). What waits in a
worker's own stream longer than `STEAL_AFTER_S` (its worker frozen, dead, or filled by the shared
stream in the meantime) is taken by any worker with a free slot (`STEAL`), and entries a dead worker
had taken are reclaimed from its own stream by the reapers as on the shared one. See `DESIGN.md`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from server.queue.messages import Job

MIN_PREFIX_CHARS = 256  # a shorter shared prefix is not worth steering a request for
PROMPT_CHUNK_CHARS = 1024  # a completion prompt's prefixes: whole chunks of this many characters
PUBLISHED_PER_SLOT = 16  # a slot's longest prefixes a worker publishes
MATCHED_PER_JOB = 32  # a job's longest prefixes the gateway looks for
STEAL_AFTER_S = 0.5  # an entry waiting this long in another worker's own stream may be taken by anyone
SLOT_KINDS = ("chat", "completion")  # the jobs that take a slot (and may overwrite what it keeps)


@dataclass(frozen=True)
class Prefix:
    digest: str  # 16 hex digits
    chars: int  # the prefix's length in characters of canonical JSON (chat) or prompt text (completion)


def _digest(previous: str, part: str) -> str:
    return hashlib.blake2b((previous + "\x1f" + part).encode(), digest_size=8).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprints(job: Job) -> list[Prefix]:
    """Every prefix of the job's prompt worth finding again, shortest first (empty for embeddings and
    token counts, which take no slot)."""
    if job.kind == "chat" and job.messages:
        parts = [_canonical(m) for m in job.messages]
        seed = "chat" + _canonical(job.tools or [])
    elif job.kind == "completion" and job.prompt:
        text = job.prompt
        parts = [text[i:i + PROMPT_CHUNK_CHARS] for i in range(0, len(text) - PROMPT_CHUNK_CHARS + 1,
                                                                 PROMPT_CHUNK_CHARS)]
        seed = "completion"
    else:
        return []
    out: list[Prefix] = []
    digest, chars = _digest("", seed), 0
    for part in parts:
        digest, chars = _digest(digest, part), chars + len(part)
        if chars >= MIN_PREFIX_CHARS:
            out.append(Prefix(digest, chars))
    return out


def held(slots: dict[int, list[Prefix]]) -> set[str]:
    """What a worker publishes: the longest `PUBLISHED_PER_SLOT` prefixes of what each slot holds."""
    return {p.digest for prefixes in slots.values() for p in prefixes[-PUBLISHED_PER_SLOT:]}


# KEYS: shared stream, the model's dispatch workers (set), heartbeats (zset), the job's admitted mark.
# ARGV: max backlog, field, payload, own-stream prefix, worker-info prefix, prefixes prefix, heartbeat ttl,
#       group, mark ttl, holder only (1: the fair queue's gateways place a job here only on a holder with a
#       free slot), takes a slot (1: a chat or completion, with dispatch on), then the job's prefix digests
#       shortest first. Returns {stream, entry id}; false when full, or (holder only) when no worker takes it.
# A job no free worker holds a prefix of goes to the shared stream, unless a live worker's free slots all keep
# other conversations (`kept`, `worker/prefixes.py`: the one it took would lose its cache) while another's
# has a slot keeping nothing to spare: then to that one's own stream (the most such slots wins).
# Idempotent: a retried admission whose reply was lost finds its mark and queues nothing twice.
ADMIT = """
local prior = redis.call('GET', KEYS[4])
if prior then return {prior, ''} end
local members = redis.call('SMEMBERS', KEYS[2])
local depth = redis.call('XLEN', KEYS[1])
for _, w in ipairs(members) do depth = depth + redis.call('XLEN', ARGV[4] .. w) end
if depth >= tonumber(ARGV[1]) then return false end
local target = KEYS[1]
local chosen = nil
if ARGV[11] == '1' and #members > 1 then
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) - tonumber(ARGV[7])
  local busy = {}
  local summary = redis.pcall('XPENDING', KEYS[1], ARGV[8])
  if type(summary) == 'table' and not summary.err and summary[4] then
    for _, c in ipairs(summary[4]) do busy[c[1]] = tonumber(c[2]) end
  end
  local best = 0
  local roomy, most_empty, crowded = nil, 0, false
  for _, w in ipairs(members) do
    local beat = redis.call('ZSCORE', KEYS[3], w)
    local info = redis.call('HMGET', ARGV[5] .. w, 'slots', 'draining', 'kept')
    if beat and tonumber(beat) >= oldest and info[1] and info[2] ~= '1' then
      local used = (busy[w] or 0) + redis.call('XLEN', ARGV[4] .. w)
      if tonumber(info[1]) - used > 0 then
        for i = #ARGV, 12 + best, -1 do
          if redis.call('SISMEMBER', ARGV[6] .. w, ARGV[i]) == 1 then
            best = i - 11
            chosen = w
            break
          end
        end
        local empty = tonumber(info[1]) - math.max(tonumber(info[3] or '0'), used)
        if empty > most_empty then roomy, most_empty = w, empty elseif empty <= 0 then crowded = true end
      end
    end
  end
  if chosen == nil and crowded then chosen = roomy end
  if chosen ~= nil then target = ARGV[4] .. chosen end
end
if chosen == nil and ARGV[10] == '1' then return false end
local id = redis.call('XADD', target, '*', ARGV[2], ARGV[3])
redis.call('SET', KEYS[4], target, 'EX', ARGV[9])
return {target, id}
"""

# KEYS: shared stream, the model's dispatch workers (set). ARGV: own-stream prefix. The model's depth: its shared
# stream and every worker's own stream (queued + running: workers delete what they finish).
DEPTH = """
local depth = redis.call('XLEN', KEYS[1])
for _, w in ipairs(redis.call('SMEMBERS', KEYS[2])) do depth = depth + redis.call('XLEN', ARGV[1] .. w) end
return depth
"""

# KEYS: the model's dispatch workers (set). ARGV: group, this worker's id, own-stream prefix, age in ms.
# Reads (XREADGROUP, so exactly one worker gets it) the oldest undelivered entry of another worker's own stream
# once it has waited `age` ms; returns XREADGROUP's reply or false.
STEAL = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for _, w in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if w ~= ARGV[2] then
    local s = ARGV[3] .. w
    local groups = redis.pcall('XINFO', 'GROUPS', s)
    if type(groups) == 'table' and not groups.err then
      for _, g in ipairs(groups) do
        local name, last
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
        end
        if name == ARGV[1] and last then
          local first = redis.call('XRANGE', s, '(' .. last, '+', 'COUNT', 1)
          if #first > 0 and tonumber(string.match(first[1][1], '^(%d+)')) + tonumber(ARGV[4]) <= now_ms then
            return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', s, '>')
          end
        end
      end
    end
  end
end
return false
"""
