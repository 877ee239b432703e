"""The JSON messages on the queue: a job (gateway -> worker) and its events (worker -> gateway)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JOB_FIELD = "job"
EVENT_FIELD = "e"


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # GBNF, set by the worker from response_format / tools
    grammar_trigger: str | None = None  # the grammar applies once this text appears (tool_choice auto)


class Job(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    kind: Literal["chat", "completion", "embedding"]
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

    def encode(self) -> dict[Any, Any]:
        return {JOB_FIELD: self.model_dump_json(exclude_none=True)}

    @classmethod
    def decode(cls, fields: dict[bytes, bytes] | dict[str, str]) -> Job:
        raw = fields.get(JOB_FIELD) or fields.get(JOB_FIELD.encode())  # type: ignore[call-overload]
        if raw is None:
            raise ValueError("queue entry has no job field")
        return cls.model_validate_json(raw)


EventType = Literal["started", "delta", "done", "error"]


def encode_event(event: dict[str, Any]) -> dict[Any, Any]:
    return {EVENT_FIELD: json.dumps(event, separators=(",", ":"))}


def decode_event(fields: dict[bytes, bytes]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(fields[EVENT_FIELD.encode()])
    return value
