"""The JSON messages on the queue: a job (gateway -> worker) and the envelope of its events (worker ->
gateway; the events themselves are typed in `server.queue.events`)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.engine.params import SamplingParams

__all__ = ["EVENT_FIELD", "JOB_FIELD", "Job", "SamplingParams", "decode_event", "decode_event_value", "encode_event"]

JOB_FIELD = "job"
EVENT_FIELD = "e"


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    kind: Literal["chat", "completion", "embedding", "tokenize"]  # tokenize: the chat prompt's length only
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    inputs: list[str] | list[list[int]] | None = None  # embedding inputs, as text or token ids
    params: SamplingParams = Field(default_factory=SamplingParams)
    n: int = 1
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # 'auto' | 'required' | {"type": "function", "function": {"name": ...}}
    parallel_tool_calls: bool = True
    enqueued_at: float
    deadline: float
    priority: int | None = None  # its class in the fair queue (`server.queue.priority`)
    trace: bool | None = None  # the worker reports when each stage before the first token ended (`Done.trace`)
    feed: str | None = None  # the channel its gateway follows (`queue/feed.py`): each event is also published there

    def encode(self) -> dict[Any, Any]:
        return {JOB_FIELD: self.model_dump_json(exclude_none=True)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Job:
        raw = fields.get(JOB_FIELD) or fields.get(JOB_FIELD.encode())  # type: ignore[call-overload]
        if raw is None:
            raise ValueError("queue entry has no job field")
        return cls.model_validate_json(raw)


# One encoder and one decoder for every event: they run for every token, on both sides of the queue.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()


def encode_event(event: dict[str, Any]) -> dict[Any, Any]:
    return {EVENT_FIELD: _ENCODER.encode(event)}


def decode_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    return decode_event_value(fields[EVENT_FIELD.encode()])


def decode_event_value(value: bytes) -> dict[str, Any]:
    """An event from its field's value (as a stream entry or the event feed carries it)."""
    event: dict[str, Any] = _DECODER.decode(value.decode())  # ASCII: `encode_event` escapes the rest
    return event
