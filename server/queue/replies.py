"""What a worker writes back to Redis, as pipeline commands: events on a request's response stream
and the acknowledgement that takes a request off its model's stream.

The decode thread hands these to its `Outbox` (which writes them without waiting for the answer); the
intake thread (which settles requests that never reach a slot) runs them at once with `send`.

An event is also published on the event feed its job names (`Job.feed`, one channel per gateway:
`queue/feed.py`), in the same script as its `XADD`: the gateway's one subscription hands it to the
waiting request without a read per request per token; the stream stays the record that a request
catches up from (on registering, after a lost subscription, after a silent wait).

A worker numbers the events of each attempt from 1 and writes event number n of attempt a as stream
entry `a-n` (an explicit id, in place of Redis's clock): a later attempt's entries sort after an
earlier one's, and the same event has the same id however it reaches the gateway. A worker on the
gateway's own host hands events over directly (`queue/local_feed.py`) and writes their entries
unpublished, a step's text deltas a little later, several steps in one write (`worker/handovers.py`).

Writes are fenced by the request's running mark (`slm:running:{id}`, the attempt the last worker to
admit it set): an event, or an ack that names its request, of an older attempt than the mark is
dropped by Redis itself. A worker cut off from Redis may still have writes in flight (in its kernel's
socket buffer, retransmitted when the link comes back, after another worker took the request over);
they land on nothing. The check and the write are one script, so no takeover falls between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from server.queue import keys
from server.queue.events import Event, Failed, to_wire
from server.queue.messages import Job, encode_event

RESPONSE_TTL_S = 600

# KEYS[1] = response stream, KEYS[2] = running mark; ARGV = attempt, TTL, field, value, feed channel ('': none),
# entry id ('*': Redis's), event type (read by the outbox, not here).
# The feed gets "stream\nentry id\nvalue": its gateway hands the event to the request reading that stream.
# An explicit id at or below the stream's last is an entry written already: nothing is written again.
# `pcall` on PUBLISH: a Redis user without Pub/Sub rights (an ACL user's channels are closed by default) still
# writes its events; its gateways cannot subscribe either, and read their streams instead.
_FENCED_EVENT = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) then return 0 end
local id = redis.pcall('XADD', KEYS[1], ARGV[6], ARGV[3], ARGV[4])
if type(id) == 'table' then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then redis.pcall('PUBLISH', ARGV[5], KEYS[1] .. '\\n' .. id .. '\\n' .. ARGV[4]) end
return 1
"""

# KEYS[1] = request stream, KEYS[2] = running mark; ARGV = attempt, group, entry id
_FENCED_ACK = """
if tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
"""

Command = tuple[Any, ...]  # one Redis command's words: ("EVAL", script, 2, ...), ("XACK", ...)


# KEYS[1] = running mark; ARGV = attempt, TTL. Only ever raised: a late write of an older attempt
# (retransmitted after a cut link) cannot open the fence again. With KEYS[2] (the passed mark of the
# request admitted just before) and ARGV[3] (its attempt): that one got through its own work.
_MARK_RUNNING = """
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2]) end
if tonumber(redis.call('GET', KEYS[1]) or '0') > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def mark_running(client: redis.Redis, request_id: str, attempt: int, ttl_s: int,
                 passed: tuple[str, int] | None = None) -> bool:
    """Set the request's running mark to `attempt` (now, synchronously); False if a newer attempt holds it.
    `passed`: the request (and attempt) this worker admitted just before, whose `started` may not be
    written yet: it got through its own work, so a crash from here on is not its doing."""
    marks = [keys.job_running(request_id)] + ([] if passed is None else [keys.job_passed(passed[0])])
    args = [attempt, ttl_s] + ([] if passed is None else [passed[1]])
    return bool(client.eval(_MARK_RUNNING, len(marks), *marks, *args))


# KEYS[1] = running mark; ARGV = attempt. Deleted only while it still names that attempt.
_UNMARK_RUNNING = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


def unmark_running(client: redis.Redis, request_id: str, attempt: int) -> bool:
    """Take back `attempt`'s running mark (a worker that lost Redis while holding the request: it did
    not crash on it); a newer attempt's mark stays. True once Redis answered."""
    return bool(client.eval(_UNMARK_RUNNING, 1, keys.job_running(request_id), str(attempt)))


def event(request_id: str, event: Event, feed: str | None = None, number: int = 0) -> list[Command]:
    """Append one event to the request's response stream (which expires if nobody reads it), and
    publish it on `feed` (the job's `feed`: its gateway's channel) when there is one. `number`: the
    event's place in its attempt (from 1), its entry id `attempt-number`; 0: an id of Redis's clock."""
    return event_fields(request_id, to_wire(event), feed, number)


def event_fields(request_id: str, fields: dict[str, Any], feed: str | None = None, number: int = 0) -> list[Command]:
    """`event` for an event already in its wire form (tests write partial ones), fenced by its attempt."""
    ((field, value),) = encode_event(fields).items()
    attempt = int(fields.get("attempt") or 0)
    entry = f"{attempt}-{number}" if number > 0 else "*"
    return [("EVAL", _FENCED_EVENT, 2, keys.response_stream(request_id), keys.job_running(request_id),
             attempt, RESPONSE_TTL_S, field, value, feed or "", entry, str(fields.get("type", "")))]


def job_event(job: Job, event_: Event, number: int) -> list[Command]:
    """`event` for one of `job`'s events, number `number` of its attempt: on its response stream and its
    gateway's feed."""
    return event(job.id, event_, job.feed, number)


def error(job: Job, attempt: int, status: int, code: str | None, message: str, *,
          param: str | None = None, error_type: str = "service_unavailable", number: int = 1) -> list[Command]:
    """A request's error event (by default the first of its attempt: one refused before it started)."""
    return job_event(job, Failed(attempt, status, code, message, param, error_type), number)


@dataclass(frozen=True)
class Handover:
    """An event command as the worker hands it to a gateway on this host (`worker/handovers.py`)."""

    feed: str  # the gateway's channel
    stream: str  # the request's response stream
    frame: bytes  # "stream\nentry id\nvalue", as the feed publishes it
    kind: str  # the event's type ("delta": its entry may be written late)
    unpublished: Command  # the command that writes its entry without publishing it


def handover(words: Command) -> Handover | None:
    """The event that an `event` command writes, for a direct hand-off; None for any other command, an
    event without a feed or without an explicit entry id (the gateway could not order it)."""
    if len(words) != 12 or words[1] is not _FENCED_EVENT or not words[9] or words[10] == "*":
        return None
    value = words[8]
    frame = b"\n".join((str(words[3]).encode(), str(words[10]).encode(),
                         value if isinstance(value, bytes) else str(value).encode()))
    return Handover(words[9], str(words[3]), frame, words[11], (*words[:9], "", *words[10:]))


def ack(stream: str, entry_id: str, *, request_id: str = "", attempt: int = 0) -> list[Command]:
    """Done with a request: acknowledged and deleted from its model's stream; with its request and
    attempt, only while no newer attempt took it over."""
    if request_id:
        return [("EVAL", _FENCED_ACK, 2, stream, keys.job_running(request_id), attempt, keys.GROUP, entry_id)]
    return [("XACK", stream, keys.GROUP, entry_id), ("XDEL", stream, entry_id)]


def send(client: redis.Redis, commands: list[Command]) -> None:
    """Run `commands` as one MULTI/EXEC: a gateway blocked reading a response stream wakes once, to
    every event of the batch (a last token and `done` arrive in one read, not two round trips)."""
    pipe = client.pipeline(transaction=True)
    queue_command: Any = pipe.execute_command  # untyped in redis-py
    for words in commands:
        queue_command(*words)
    pipe.execute()
