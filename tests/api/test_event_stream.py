"""`EventStreamResponse`: the last chunk of a stream is sent as the end of the body, in one message."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from server.api.event_stream import EventStreamResponse
from server.serving.formatting import LastChunk


async def _call(response: EventStreamResponse) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "POST", "path": "/", "headers": []}
    await response(scope, receive, send)
    return sent


async def test_the_last_chunk_ends_the_body_and_the_generator_is_closed() -> None:
    closed: list[bool] = []

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            yield LastChunk(b"data: 2\n\ndata: [DONE]\n\n")
            yield b"never sent"
        finally:
            closed.append(True)

    sent = await _call(EventStreamResponse(frames()))
    assert sent[0]["type"] == "http.response.start"
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    bodies = [(m["body"], m["more_body"]) for m in sent[1:]]
    assert bodies == [(b"data: 1\n\n", True), (b"data: 2\n\ndata: [DONE]\n\n", False)]
    assert type(sent[-1]["body"]) is bytes  # a plain bytes object for the server, not the marker
    assert closed == [True]


async def test_a_stream_without_a_last_chunk_ends_with_an_empty_body_message() -> None:
    async def frames() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"

    sent = await _call(EventStreamResponse(frames()))
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [(b"data: 1\n\n", True), (b"", False)]
