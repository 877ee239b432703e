"""Queue events: typed on both sides, written exactly as workers wrote them before they were typed."""

from __future__ import annotations

from typing import Any

import pytest

from server.queue.events import (
    ChoiceFinished,
    Done,
    Event,
    Failed,
    Started,
    TextDelta,
    Unknown,
    from_wire,
    to_wire,
)

# (typed event, the JSON object the untyped worker wrote for it)
WIRE: list[tuple[Event, dict[str, Any]]] = [
    (Started(1, "host-1-abc", 12), {"type": "started", "attempt": 1, "worker": "host-1-abc", "prompt_tokens": 12}),
    (TextDelta(2, 0, "Hi", 1), {"type": "delta", "index": 0, "text": "Hi", "tokens": 1, "attempt": 2}),
    (TextDelta(1, 1, "a", 1, [{"token": "a", "logprob": -0.5}]),
     {"type": "delta", "index": 1, "text": "a", "tokens": 1, "logprobs": [{"token": "a", "logprob": -0.5}],
      "attempt": 1}),
    (ChoiceFinished(1, 1, "length"), {"type": "finish", "index": 1, "finish_reason": "length", "attempt": 1}),
    (Done(1, "stop", {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0},
          {"prompt_ms": 1.5, "predicted_ms": 2.25}, cancelled=False),
     {"type": "done", "finish_reason": "stop", "cancelled": False,
      "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 0},
      "timings": {"prompt_ms": 1.5, "predicted_ms": 2.25}, "attempt": 1}),
    (Done(1, "stop", {"prompt_tokens": 2, "completion_tokens": 0}, {}, embeddings=[[0.5, 1.0]]),
     {"type": "done", "attempt": 1, "finish_reason": "stop", "embeddings": [[0.5, 1.0]], "timings": {},
      "usage": {"prompt_tokens": 2, "completion_tokens": 0}}),
    (Done(1, "stop", {}, {}, cancelled=False, stop_sequence="\n\nHuman:"),
     {"type": "done", "attempt": 1, "finish_reason": "stop", "cancelled": False, "stop_sequence": "\n\nHuman:",
      "usage": {}, "timings": {}}),
    (Failed(3, 400, "context_length_exceeded", "too long", "messages", "invalid_request_error"),
     {"type": "error", "attempt": 3, "status": 400, "code": "context_length_exceeded", "message": "too long",
      "param": "messages", "error_type": "invalid_request_error"}),
]


@pytest.mark.parametrize(("event", "wire"), WIRE)
def test_events_keep_their_wire_form_and_read_back(event: Event, wire: dict[str, Any]) -> None:
    assert to_wire(event) == wire
    assert from_wire(wire) == event


def test_missing_fields_read_with_the_gateways_defaults() -> None:
    assert from_wire({"type": "delta"}) == TextDelta(1, 0, "", 0, None)
    assert from_wire({"type": "done", "attempt": 2}) == Done(2, "stop", {}, {})
    assert from_wire({"type": "error"}) == Failed(1, 500, None, "The request failed.")


def test_an_unknown_kind_is_read_past_not_refused() -> None:
    assert from_wire({"type": "progress", "attempt": 4}) == Unknown(4, "progress")
