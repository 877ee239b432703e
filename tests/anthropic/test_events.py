"""The service's OpenAI stream as Anthropic's events, and whole answers as Anthropic messages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from server.anthropic.answer import whole_message
from server.anthropic.events import anthropic_stream
from server.backends.base import Result
from server.serving.formatting import DONE_FRAME, LastChunk, Shape, sse

SHAPE = Shape("chat", "chatcmpl-1", 0, "m")


async def frames(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks[:-1]:
        yield chunk
    yield LastChunk(chunks[-1])


async def events(chunks: AsyncIterator[bytes], result: Result) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    out: list[tuple[str, dict[str, Any]]] = []
    ended = False
    async for data in anthropic_stream(chunks, "m", lambda: result):
        assert not ended, "nothing after the last chunk"
        ended = isinstance(data, LastChunk)
        for frame in bytes(data).decode().split("\n\n"):
            if frame:
                name, payload = frame.split("\n")
                body = json.loads(payload.removeprefix("data: "))
                assert name == f"event: {body['type']}"
                out.append((body["type"], body))
    return out, ended


async def test_thinking_text_and_tool_calls_become_blocks_in_order() -> None:
    result = Result(prompt_tokens=7)
    call = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": ""}}
    stream = frames(
        SHAPE.chunk(role=True, text=""),
        SHAPE.chunk(reasoning="think ") + SHAPE.chunk(reasoning="more"),
        SHAPE.chunk(text="Hello"),
        SHAPE.chunk(tool_calls=[call]),
        sse({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
            "arguments": '{"city"'}}]}, "finish_reason": None}]}),
        sse({"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
            "arguments": ': "Oslo"}'}}]}, "finish_reason": None}]}),
        SHAPE.chunk(finish_reason="tool_calls") + sse({"choices": [], "usage": {
            "prompt_tokens": 7, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 3}}})
        + DONE_FRAME)
    got, ended = await events(stream, result)
    names = [name for name, _ in got]
    assert ended and names == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert got[0][1]["message"]["usage"]["input_tokens"] == 7 and got[0][1]["message"]["id"].startswith("msg_")
    starts = [body["content_block"] for name, body in got if name == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""},
                      {"type": "tool_use", "id": "call_1", "name": "w", "input": {}}]
    deltas = [body["delta"] for name, body in got if name == "content_block_delta"]
    assert deltas[1] == {"type": "thinking_delta", "thinking": "more"}
    assert deltas[2] == {"type": "text_delta", "text": "Hello"}
    assert "".join(d["partial_json"] for d in deltas[3:]) == '{"city": "Oslo"}'
    assert [body["index"] for name, body in got if name == "content_block_stop"] == [0, 1, 2]
    final = got[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": 7, "output_tokens": 9, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 3}


async def test_a_stop_sequence_is_named_and_an_error_ends_the_stream() -> None:
    result = Result(extra={"stop_sequence": "END"})
    got, _ = await events(frames(SHAPE.chunk(role=True, text=""), SHAPE.chunk(text="a")
                                 + SHAPE.chunk(finish_reason="stop") + DONE_FRAME), result)
    assert got[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    error = {"error": {"message": "broke", "type": "upstream_error", "param": None, "code": "x"}}
    got, ended = await events(frames(SHAPE.chunk(role=True, text=""), SHAPE.chunk(text="a") + sse(error)
                                     + DONE_FRAME), Result())
    assert ended and got[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "broke"}})
    assert "message_stop" not in [name for name, _ in got]


def test_whole_message() -> None:
    body = SHAPE.whole({0: ""}, Result(finish_reason="length", prompt_tokens=4, completion_tokens=2), {},
                       calls={0: [{"id": "call_1", "type": "function", "function": {"name": "w",
                                                                                   "arguments": '{"a": 1}'}}]},
                       fields={0: {"reasoning_content": "why"}})
    message = whole_message(body, Result(), "m")
    assert message["content"] == [{"type": "thinking", "thinking": "why", "signature": ""},
                                  {"type": "tool_use", "id": "call_1", "name": "w", "input": {"a": 1}}]
    assert message["stop_reason"] == "max_tokens" and message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 4 and message["usage"]["output_tokens"] == 2
