"""The event sequence written from chat chunks: every event and the final response valid against
the spec, numbered in order, text and function-call arguments joined."""

from __future__ import annotations

from typing import Any

from server.protocol_responses import ResponsesRequest
from server.responses import objects
from server.responses.events import EventWriter, chat_payloads
from tests.openapi import assert_valid, assert_valid_event


def writer() -> EventWriter:
    req = ResponsesRequest.model_validate({"model": "tiny", "input": "hi"})
    return EventWriter(objects.skeleton(req, "resp_1", "tiny", []), local=True)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}


def check(events: list[dict[str, Any]]) -> None:
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        assert_valid_event(event)


def test_text_then_calls_then_completed() -> None:
    w = writer()
    events = w.start()
    events += w.chat_chunk(chunk({"role": "assistant", "content": ""}))
    events += w.chat_chunk(chunk({"content": "Let me "}))
    events += w.chat_chunk(chunk({"content": "check."}))
    events += w.chat_chunk(chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                                  "function": {"name": "weather", "arguments": '{"city"'}}]}))
    events += w.chat_chunk(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}))
    events += w.chat_chunk(chunk({}, finish="tool_calls"))
    events += w.chat_chunk({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 7,
                                                     "prompt_tokens_details": {"cached_tokens": 12}}})
    events += w.complete()
    check(events)
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = events[-1]["response"]
    assert_valid("Response", final)
    assert final["output"][0]["content"][0]["text"] == "Let me check."
    assert final["output"][1]["arguments"] == '{"city": "Oslo"}' and final["output"][1]["call_id"] == "call_a"
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 12, "cache_write_tokens": 8}
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


def test_a_cut_answer_is_incomplete_and_a_failure_is_error_then_failed() -> None:
    w = writer()
    events = w.start() + w.chat_chunk(chunk({"content": "one two"})) + w.chat_chunk(chunk({}, finish="length"))
    events += w.complete()
    check(events)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}

    w = writer()
    events = w.start() + w.chat_chunk(chunk({"content": "one"}))
    events += w.fail({"message": "the worker was lost", "type": "server_error", "param": None,
                      "code": "generation_failed"})
    check(events)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error", "message": "the worker was lost"}


def test_chat_frames_are_read_back() -> None:
    frames = b': ok\n\ndata: {"a":1}\n\ndata: [DONE]\n\n'
    payloads = chat_payloads(frames)
    assert payloads[0] == {"a": 1} and len(payloads) == 2


def test_a_providers_reasoning_and_refusal() -> None:
    w = writer()
    events = w.start()
    events += w.chat_chunk(chunk({"reasoning_content": "The user wants "}))
    events += w.chat_chunk(chunk({"reasoning_content": "something harmful."}))
    events += w.chat_chunk(chunk({"refusal": "I can't help with that."}))
    events += w.chat_chunk(chunk({}, finish="stop"))
    events += w.complete()
    check(events)
    kinds = [e["type"] for e in events]
    assert kinds[2:] == [
        "response.output_item.added", "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.output_item.done", "response.output_item.added",
        "response.content_part.added", "response.refusal.delta", "response.refusal.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    final = events[-1]["response"]
    assert_valid("Response", final)
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "The user wants something harmful."}]
    assert final["output"][1]["content"] == [{"type": "refusal", "refusal": "I can't help with that."}]
