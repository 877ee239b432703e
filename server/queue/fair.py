"""The fair queue (`SLM_QUEUE_POLICY=fair`): jobs wait per priority class and API key, and a worker's
take picks by class, then by deficit round robin between the keys backlogged in that class.

Every structure lives in Redis under `keys.fair_queue(model)` (`P`), so the order is the same for
every gateway and worker sharing it:

    P jobs              hash   job id -> the job (JSON)
    P where             hash   job id -> "class|key"
    P q:{class}:{key}   list   the key's waiting job ids in that class, oldest first
    P ring:{class}      list   the keys backlogged in that class, in round-robin order (head: its turn)
    P deficit:{class}   hash   key -> its DRR deficit; `g:{key}` marks that the head had its quantum
    P ages:{class}      zset   job id -> enqueue time (ms): the class's oldest, for the starvation bound
    P classes           zset   the backlogged classes (score: the class)
    P weight            hash   key -> its weight (the latest admission's)
    P depth / perkey    hash   waiting jobs per class / per key;  P waiting: all of them
    P taken             int    jobs taken so far (the gateways' drain rate)
    P bell              list   one token per job waiting in the lists (at most 64): the autoscaler's signal
    P idle              zset   worker id -> its free slots, while it is parked on the model's stream

Admission (`ADMIT`) is one script, idempotent like the FIFO one (`slm:admitted:{id}`: a retried
admission whose reply was lost queues nothing twice): it refuses while waiting + running (`XLEN` of the model's stream)
is at `max_queue`, or while the key's waiting jobs are at its share of `max_queue`, enqueuing nothing.
When nothing is waiting (the lists empty, nothing undelivered on the stream) and a worker is parked with
a free slot, there is nothing to order: the job goes straight onto the model's stream, where the parked
worker's blocking `XREADGROUP` returns it (one hop, as in the FIFO queue). Otherwise it waits in the
lists; if a worker is parked all the same (it parked a moment before the job before this one came), a
bell entry on the stream wakes it to take.

An idle worker parks (`PARK`: `ZADD P idle` unless jobs wait in the lists, when it rings a bell entry
instead) and blocks in `XREADGROUP` on its own stream and the model's, in one pipeline; its next take
(`TAKE`, one round trip) unparks it, acknowledges the bells it read, reads its own stream and what is
undelivered on the model's (direct jobs, a FIFO gateway's), then for each free slot picks a job and moves
it onto the model's stream and into the consumer group with `XREADGROUP`, in the same script: from there
on leases, `XAUTOCLAIM` redelivery, delivery counts and dead letters work as before, and a reclaimed job
keeps its place (the reaper takes it before anything new). The pick: the highest backlogged class, in it
the key at the head of the ring while its deficit allows (each turn adds its weight; one job costs 1; a
key whose list empties leaves the ring and its deficit). Starvation bound: when a lower class's oldest
job has waited `starve_ms`, it is taken first, at most once every `aged_every` picks, so a low class
always progresses and never takes over.
"""

from __future__ import annotations

from dataclasses import dataclass

BELL_FIELD = "bell"  # a bell entry on the model's stream: wakes a parked worker to take from the lists

# KEYS: the model's stream, the job's admitted mark. ARGV: prefix, max_queue, key cap, key, class, weight, job id,
# payload, enqueued (ms), mark TTL, group, job field, bell field. {verdict, total, the key's waiting, direct}
ADMIT = """
local P = ARGV[1]
local kid, c, id = ARGV[4], ARGV[5], ARGV[7]
local waiting = tonumber(redis.call('GET', P..'waiting') or '0')
local total = waiting + redis.call('XLEN', KEYS[1])
local mine = tonumber(redis.call('HGET', P..'perkey', kid) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, total, mine, 0} end
if total >= tonumber(ARGV[2]) then return {0, total, mine, 0} end
if mine >= tonumber(ARGV[3]) then return {-1, total, mine, 0} end
local parked = redis.call('ZREVRANGE', P..'idle', 0, 0, 'WITHSCORES')
local undelivered = 1
if #parked > 0 then
  undelivered = redis.call('XLEN', KEYS[1]) - redis.call('XPENDING', KEYS[1], ARGV[11])[1]
end
if waiting == 0 and #parked > 0 and undelivered <= 0 then
  if tonumber(parked[2]) <= 1 then redis.call('ZREM', P..'idle', parked[1])
  else redis.call('ZINCRBY', P..'idle', -1, parked[1]) end
  redis.call('XADD', KEYS[1], '*', ARGV[12], ARGV[8])
  redis.call('SET', KEYS[2], id, 'EX', ARGV[10])
  return {1, total + 1, mine, 1}
end
local q = P..'q:'..c..':'..kid
if redis.call('RPUSH', q, id) == 1 then redis.call('RPUSH', P..'ring:'..c, kid) end
redis.call('HSET', P..'jobs', id, ARGV[8])
redis.call('HSET', P..'where', id, c..'|'..kid)
redis.call('ZADD', P..'ages:'..c, ARGV[9], id)
redis.call('ZADD', P..'classes', c, c)
redis.call('HSET', P..'weight', kid, ARGV[6])
redis.call('HINCRBY', P..'depth', c, 1)
redis.call('HINCRBY', P..'perkey', kid, 1)
redis.call('INCR', P..'waiting')
redis.call('SET', KEYS[2], id, 'EX', ARGV[10])
redis.call('LPUSH', P..'bell', 1)
redis.call('LTRIM', P..'bell', 0, 63)
if #parked > 0 and undelivered <= 0 then redis.call('XADD', KEYS[1], '*', ARGV[13], 1) end
return {1, total + 1, mine + 1, 0}
"""

# KEYS: the model's stream, this worker's own stream. ARGV: prefix, group, consumer, room, starve (ms), aged every,
# job field, bell field, then the ids of bell entries this worker read (acknowledged and deleted).
# {the own stream's entries, the model's stream's} as XREADGROUP gives them; bell entries never.
TAKE = """
local P, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local room, starve, every = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local field, bell = ARGV[7], ARGV[8]
local own, out = {}, {}
redis.call('ZREM', P..'idle', consumer)
for i = 9, #ARGV do
  redis.call('XACK', KEYS[1], group, ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
local function read(stream, count, into)
  local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if not got then return 0 end
  for _, e in ipairs(got[1][2]) do
    if e[2][1] == bell then
      redis.call('XACK', stream, group, e[1])
      redis.call('XDEL', stream, e[1])
    else
      into[#into + 1] = e
    end
  end
  return #got[1][2]
end
read(KEYS[2], room, own)
for _ = 1, 4 do
  if #own + #out >= room or read(KEYS[1], room - #own - #out, out) == 0 then break end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function split(where)
  local bar = string.find(where, '|', 1, true)
  return string.sub(where, 1, bar - 1), string.sub(where, bar + 1)
end

local function leave_ring(c, kid)
  redis.call('LREM', P..'ring:'..c, 1, kid)
  redis.call('HDEL', P..'deficit:'..c, kid, 'g:'..kid)
end

local function drr(c)
  local ring, dkey = P..'ring:'..c, P..'deficit:'..c
  for _ = 1, 10000 do
    local kid = redis.call('LINDEX', ring, 0)
    if not kid then return nil end
    local q = P..'q:'..c..':'..kid
    if redis.call('LLEN', q) == 0 then
      leave_ring(c, kid)
    else
      local d = tonumber(redis.call('HGET', dkey, kid) or '0')
      if d >= 1 then
        redis.call('HSET', dkey, kid, d - 1)
        return redis.call('LINDEX', q, 0)
      end
      if redis.call('HEXISTS', dkey, 'g:'..kid) == 1 then
        redis.call('HDEL', dkey, 'g:'..kid)
        redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
      else
        local w = tonumber(redis.call('HGET', P..'weight', kid) or '1')
        redis.call('HSET', dkey, kid, d + w, 'g:'..kid, 1)
      end
    end
  end
  return nil
end

local function aged(top)
  local since = tonumber(redis.call('GET', P..'since_aged') or '0')
  if since + 1 < every then return nil end
  local best, best_at = nil, now - starve
  for _, c in ipairs(redis.call('ZRANGEBYSCORE', P..'classes', '-inf', '('..top)) do
    local oldest = redis.call('ZRANGE', P..'ages:'..c, 0, 0, 'WITHSCORES')
    if #oldest > 0 and tonumber(oldest[2]) <= best_at then best, best_at = oldest[1], tonumber(oldest[2]) end
  end
  return best
end

local moved = 0
while #own + #out + moved < room do
  local top = redis.call('ZREVRANGE', P..'classes', 0, 0)[1]
  if not top then break end
  local id = aged(top)
  if id then redis.call('SET', P..'since_aged', 0) else
    redis.call('INCR', P..'since_aged')
    id = drr(top)
  end
  if not id then redis.call('ZREM', P..'classes', top) else
    local c, kid = split(redis.call('HGET', P..'where', id))
    local q = P..'q:'..c..':'..kid
    redis.call('LREM', q, 1, id)
    if redis.call('LLEN', q) == 0 then leave_ring(c, kid) end
    local payload = redis.call('HGET', P..'jobs', id)
    redis.call('HDEL', P..'jobs', id)
    redis.call('HDEL', P..'where', id)
    redis.call('ZREM', P..'ages:'..c, id)
    redis.call('DECR', P..'waiting')
    if redis.call('HINCRBY', P..'depth', c, -1) <= 0 then
      redis.call('HDEL', P..'depth', c)
      redis.call('ZREM', P..'classes', c)
    end
    if redis.call('HINCRBY', P..'perkey', kid, -1) <= 0 then redis.call('HDEL', P..'perkey', kid) end
    redis.call('INCR', P..'taken')
    if payload then
      redis.call('XADD', KEYS[1], '*', field, payload)
      moved = moved + 1
    end
  end
end
if moved > 0 then
  redis.call('LPOP', P..'bell', moved)
  read(KEYS[1], moved, out)
end
return {own, out}
"""

# KEYS: the model's stream. ARGV: prefix, worker id, its free slots, group, bell field. A worker about to block on
# its streams parks here, in the same pipeline as the blocking read: 1 parked; 0 not, as jobs wait in the lists (a
# bell entry is then on the stream, so the read that follows returns at once and the next take gets them).
PARK = """
local P = ARGV[1]
if tonumber(redis.call('GET', P..'waiting') or '0') > 0 then
  if redis.call('XLEN', KEYS[1]) - redis.call('XPENDING', KEYS[1], ARGV[4])[1] <= 0 then
    redis.call('XADD', KEYS[1], '*', ARGV[5], 1)
  end
  return 0
end
redis.call('ZADD', P..'idle', ARGV[3], ARGV[2])
return 1
"""

# ARGV = prefix, job id. {position (1 = next; 0 = no longer waiting), jobs waiting in all}
POSITION = """
local P, id = ARGV[1], ARGV[2]
local waiting = tonumber(redis.call('GET', P..'waiting') or '0')
local where = redis.call('HGET', P..'where', id)
if not where then return {0, waiting} end
local bar = string.find(where, '|', 1, true)
local c, kid = string.sub(where, 1, bar - 1), string.sub(where, bar + 1)
local idx = redis.call('LPOS', P..'q:'..c..':'..kid, id)
if not idx then return {0, waiting} end
local ahead = idx
for _, cc in ipairs(redis.call('ZRANGEBYSCORE', P..'classes', '('..c, '+inf')) do
  ahead = ahead + tonumber(redis.call('HGET', P..'depth', cc) or '0')
end
local wk = tonumber(redis.call('HGET', P..'weight', kid) or '1')
for _, j in ipairs(redis.call('LRANGE', P..'ring:'..c, 0, -1)) do
  if j ~= kid then
    local wj = tonumber(redis.call('HGET', P..'weight', j) or '1')
    local theirs = redis.call('LLEN', P..'q:'..c..':'..j)
    ahead = ahead + math.min(theirs, math.ceil((idx + 1) * wj / wk))
  end
end
return {ahead + 1, waiting}
"""


@dataclass(frozen=True)
class Admitted:
    """What `ADMIT` answered: `verdict` 1 admitted, 0 the model's queue full, -1 the key's share full."""

    verdict: int
    total: int  # waiting + running for the model (after admission, if admitted)
    mine: int  # the key's waiting jobs
    direct: bool = False  # admitted straight onto the model's stream (a worker was parked, nothing waiting)

    @classmethod
    def of(cls, reply: list[int]) -> Admitted:
        return cls(int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3]) == 1)


def key_cap(max_queue: int, share: float) -> int:
    """The most jobs one key may have waiting: its share of the model's `max_queue`, at least one."""
    return max(1, int(max_queue * share + 0.999999))


def retry_after_s(admitted: Admitted, *, max_queue: int, cap: int, drain_per_s: float, fallback_s: float) -> float:
    """Seconds until the refused request would fit, from the measured drain rate: the model's backlog
    must shrink under `max_queue`, or the key's own under its cap (its jobs leave at about its part
    of the backlog's drain). Without a measurement: `fallback_s`."""
    if drain_per_s <= 0:
        return fallback_s
    if admitted.verdict == 0:
        needed = admitted.total - max_queue + 1
        rate = drain_per_s
    else:
        needed = admitted.mine - cap + 1
        rate = drain_per_s * admitted.mine / max(admitted.total, admitted.mine, 1)
    return float(min(300, max(1, int(needed / max(rate, 1e-6) + 0.999))))
