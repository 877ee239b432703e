"""What a worker writes back to Redis, as pipeline commands: events on a request's response stream
and the acknowledgement that takes a request off its model's stream.

The decode thread hands these to its `Outbox`; the intake thread (which settles requests that
never reach a slot) runs them at once with `send`.
"""

from __future__ import annotations

from typing import Any

import redis

from server.queue import keys
from server.queue.events import Event, Failed, to_wire
from server.queue.messages import encode_event

RESPONSE_TTL_S = 600

Command = tuple[str, tuple[Any, ...]]  # a redis-py pipeline method and its arguments


def event(request_id: str, event: Event) -> list[Command]:
    """Append one event to the request's response stream (which expires if nobody reads it)."""
    return event_fields(request_id, to_wire(event))


def event_fields(request_id: str, fields: dict[str, Any]) -> list[Command]:
    """`event` for an event already in its wire form (tests write partial ones)."""
    resp = keys.response_stream(request_id)
    return [("xadd", (resp, encode_event(fields))), ("expire", (resp, RESPONSE_TTL_S))]


def error(request_id: str, attempt: int, status: int, code: str | None, message: str, *,
          param: str | None = None, error_type: str = "service_unavailable") -> list[Command]:
    return event(request_id, Failed(attempt, status, code, message, param, error_type))


def ack(stream: str, entry_id: str) -> list[Command]:
    """Done with a request: acknowledged and deleted from its model's stream."""
    return [("xack", (stream, keys.GROUP, entry_id)), ("xdel", (stream, entry_id))]


def send(client: redis.Redis, commands: list[Command]) -> None:
    """Run `commands` as one MULTI/EXEC: a gateway blocked reading a response stream wakes once, to
    every event of the batch (a last token and `done` arrive in one read, not two round trips)."""
    pipe = client.pipeline(transaction=True)
    for name, args in commands:
        getattr(pipe, name)(*args)
    pipe.execute()
