"""A request's events, worker -> gateway, typed on both sides of Redis.

Each is one JSON object in the response stream entry's `e` field (`messages.encode_event`), told
apart by its `type`: `started` (a worker took the request, after its prompt was measured), `delta`
(text of one choice), `finish` (one choice of `n` > 1 ended), `done` (the last: finish reason, the
stop sequence that ended the text, usage, timings; embeddings) and `error` (the last: a refusal or a
failure). Every event carries the `attempt` (delivery) it belongs to. `to_wire` writes the same keys
the worker always wrote, and `from_wire` reads with the same defaults the gateway always used, so old
and new processes mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Started:
    attempt: int
    worker: str = ""
    prompt_tokens: int = 0


@dataclass
class TextDelta:
    attempt: int
    index: int = 0
    text: str = ""
    tokens: int = 0
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class ChoiceFinished:
    attempt: int
    index: int
    finish_reason: str = "stop"


@dataclass
class Done:
    attempt: int
    finish_reason: str = "stop"
    usage: dict[str, int] | None = None  # prompt_tokens, completion_tokens[, cached_tokens]
    timings: dict[str, float] | None = None  # prompt_ms, predicted_ms (milliseconds)
    cancelled: bool | None = None  # a generation's: whether a cancel ended it (absent for embeddings)
    embeddings: list[list[float]] | None = None
    stop_sequence: str | None = None  # the stop sequence that ended the text, when one did
    trace: dict[str, float] | None = None  # a traced job's stage marks (wall clock seconds; batch_wait_ms)


@dataclass
class Failed:
    attempt: int
    status: int = 500
    code: str | None = None
    message: str = "The request failed."
    param: str | None = None
    error_type: str = "service_unavailable"


@dataclass
class Unknown:
    """An event of a kind this process does not know (a newer peer's); read past."""

    attempt: int
    kind: str


Event = Started | TextDelta | ChoiceFinished | Done | Failed | Unknown


def to_wire(event: Event) -> dict[str, Any]:
    """The event's JSON object, as workers have always written it."""
    if isinstance(event, Started):
        return {"type": "started", "attempt": event.attempt, "worker": event.worker,
                "prompt_tokens": event.prompt_tokens}
    if isinstance(event, TextDelta):
        wire: dict[str, Any] = {"type": "delta", "index": event.index, "text": event.text, "tokens": event.tokens}
        if event.logprobs:
            wire["logprobs"] = event.logprobs
        wire["attempt"] = event.attempt
        return wire
    if isinstance(event, ChoiceFinished):
        return {"type": "finish", "index": event.index, "finish_reason": event.finish_reason,
                "attempt": event.attempt}
    if isinstance(event, Done):
        wire = {"type": "done", "attempt": event.attempt, "finish_reason": event.finish_reason}
        if event.cancelled is not None:
            wire["cancelled"] = event.cancelled
        if event.embeddings is not None:
            wire["embeddings"] = event.embeddings
        if event.stop_sequence is not None:
            wire["stop_sequence"] = event.stop_sequence
        wire["usage"] = event.usage or {}
        wire["timings"] = event.timings or {}
        if event.trace is not None:
            wire["trace"] = event.trace
        return wire
    if isinstance(event, Failed):
        return {"type": "error", "attempt": event.attempt, "status": event.status, "code": event.code,
                "message": event.message, "param": event.param, "error_type": event.error_type}
    return {"type": event.kind, "attempt": event.attempt}


def from_wire(wire: dict[str, Any]) -> Event:
    """An event read back, with the defaults the gateway has always applied to missing keys."""
    kind = wire.get("type")
    attempt = int(wire.get("attempt", 1))
    if kind == "started":
        return Started(attempt, str(wire.get("worker", "")), int(wire.get("prompt_tokens", 0)))
    if kind == "delta":
        return TextDelta(attempt, int(wire.get("index", 0)), str(wire.get("text", "")), int(wire.get("tokens", 0)),
                         wire.get("logprobs"))
    if kind == "finish":
        return ChoiceFinished(attempt, int(wire["index"]), str(wire.get("finish_reason", "stop")))
    if kind == "done":
        cancelled, stop = wire.get("cancelled"), wire.get("stop_sequence")
        return Done(attempt, str(wire.get("finish_reason", "stop")), dict(wire.get("usage") or {}),
                    dict(wire.get("timings") or {}), None if cancelled is None else bool(cancelled),
                    wire.get("embeddings"), None if stop is None else str(stop), wire.get("trace"))
    if kind == "error":
        code, param = wire.get("code"), wire.get("param")
        return Failed(attempt, int(wire.get("status", 500)), None if code is None else str(code),
                      str(wire.get("message", "The request failed.")), None if param is None else str(param),
                      str(wire.get("error_type", "service_unavailable")))
    return Unknown(attempt, str(kind))
