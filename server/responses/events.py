"""A streamed chat answer as the Responses API's event sequence.

`response.created`, `response.in_progress`; per output item `response.output_item.added`, for a
message `response.content_part.added`, `response.output_text.delta`... `.done`,
`response.content_part.done` (a provider's refusal: `response.refusal.delta`... `.done` in its own
part), for a function call `response.function_call_arguments.delta`... `.done`, for a provider's
reasoning text a reasoning item with `response.reasoning_text.delta`... `.done`;
`response.output_item.done`; last `response.completed` (or `response.incomplete`). A
failure after the first byte is an `error` event then `response.failed`. Every event carries its
`sequence_number`; each SSE frame names its event (`event: response.output_text.delta`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from server.responses import objects
from server.responses.items import new_id

DONE = object()


def frame(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def chat_payloads(chunk: bytes) -> list[Any]:
    """The JSON payloads of the chat stream's SSE frames in one write (`DONE` for `[DONE]`)."""
    out: list[Any] = []
    for block in chunk.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append(DONE if data == b"[DONE]" else json.loads(data))
    return out


class EventWriter:
    """The events of one response, numbered; the response object kept up to date as they go."""

    def __init__(self, response: dict[str, Any], local: bool) -> None:
        self.response = response
        self.local = local
        self.sequence = 0
        self.output: list[dict[str, Any]] = response["output"]
        self._message: dict[str, Any] | None = None  # the message item being written
        self._parts: dict[str, str] = {}  # its content parts so far: kind (output_text, refusal) -> text
        self._reasoning: dict[str, Any] | None = None  # the reasoning item being written
        self._reasoning_text = ""
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item (being written)
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return event

    def _snapshot(self, kind: str) -> dict[str, Any]:
        return self._event(kind, response=copy.deepcopy(self.response))

    def start(self) -> list[dict[str, Any]]:
        return [self.created(), self.in_progress()]

    def created(self) -> dict[str, Any]:
        return self._snapshot("response.created")

    def in_progress(self) -> dict[str, Any]:
        self.response["status"] = "in_progress"
        return self._snapshot("response.in_progress")

    def chat_chunk(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if payload.get("usage"):
            self.usage = payload["usage"]
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events += self._reasoning_delta(delta["reasoning_content"])
            if delta.get("content"):
                events += self._part_delta("output_text", delta["content"])
            if delta.get("refusal"):
                events += self._part_delta("refusal", delta["refusal"])
            for fragment in delta.get("tool_calls") or []:
                events += self._call_fragment(fragment)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _added(self, item: dict[str, Any]) -> dict[str, Any]:
        self.output.append(item)
        return self._event("response.output_item.added", output_index=len(self.output) - 1, item=copy.deepcopy(item))

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self._reasoning is None:
            self._reasoning = objects.reasoning_item("", status="in_progress")
            events.append(self._added(self._reasoning))
        self._reasoning_text += text
        events.append(self._event("response.reasoning_text.delta", item_id=self._reasoning["id"],
                                  output_index=self.output.index(self._reasoning), content_index=0, delta=text))
        return events

    def _close_reasoning(self) -> list[dict[str, Any]]:
        item = self._reasoning
        if item is None:
            return []
        self._reasoning = None
        text, self._reasoning_text = self._reasoning_text, ""
        index = self.output.index(item)
        item.update(objects.reasoning_item(text, item["id"]))
        return [self._event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text),
                self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item))]

    def _part_delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        """Text or refusal text of the message being written (opened, and its part, on first use)."""
        events = self._close_reasoning()
        if self._message is None:
            self._message = objects.message_item("", status="in_progress")
            events.append(self._added(self._message))
        index = self.output.index(self._message)
        if kind not in self._parts:
            self._parts[kind] = ""
            events.append(self._event("response.content_part.added", item_id=self._message["id"], output_index=index,
                                      content_index=list(self._parts).index(kind), part=objects.part(kind, "")))
        self._parts[kind] += text
        position = list(self._parts).index(kind)
        if kind == "output_text":
            events.append(self._event("response.output_text.delta", item_id=self._message["id"], output_index=index,
                                      content_index=position, delta=text, logprobs=[]))
        elif text:
            events.append(self._event("response.refusal.delta", item_id=self._message["id"], output_index=index,
                                      content_index=position, delta=text))
        return events

    def _close_message(self) -> list[dict[str, Any]]:
        message = self._message
        if message is None:
            return []
        self._message = None
        index = self.output.index(message)
        events = []
        for position, (kind, text) in enumerate(self._parts.items()):
            if kind == "output_text":
                events.append(self._event("response.output_text.done", item_id=message["id"], output_index=index,
                                          content_index=position, text=text, logprobs=[]))
            else:
                events.append(self._event("response.refusal.done", item_id=message["id"], output_index=index,
                                          content_index=position, refusal=text))
            events.append(self._event("response.content_part.done", item_id=message["id"], output_index=index,
                                      content_index=position, part=objects.part(kind, text)))
        message["content"] = [objects.part(kind, text) for kind, text in self._parts.items()]
        message["status"] = "completed"
        self._parts = {}
        events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(message)))
        return events

    def _call_fragment(self, fragment: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close_reasoning() + self._close_message()
        position = int(fragment.get("index", 0))
        function = fragment.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            item = objects.call_item(fragment.get("id") or new_id("call"), function.get("name") or "", "",
                                     status="in_progress")
            self._calls[position] = item
            events.append(self._added(item))
        piece = function.get("arguments") or ""
        if piece:
            item["arguments"] += piece
            events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                      output_index=self.output.index(item), delta=piece))
        return events

    def _close_calls(self) -> list[dict[str, Any]]:
        events = []
        for item in self._calls.values():
            index = self.output.index(item)
            item["status"] = "completed"
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"], name=item["name"],
                                      output_index=index, arguments=item["arguments"]))
            events.append(self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item)))
        self._calls.clear()
        return events

    def complete(self) -> list[dict[str, Any]]:
        events = self._close_reasoning() + self._close_message() + self._close_calls()
        if not self.output:  # an empty answer is still one (empty) message
            events += self._part_delta("output_text", "") + self._close_message()
        objects.finish(self.response, self.finish_reason, self.usage, self.local)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        return [*events, self._snapshot(kind)]

    def fail(self, error: dict[str, Any], status: int = 500) -> list[dict[str, Any]]:
        objects.failed(self.response, objects.error_code(status), str(error.get("message") or "failed"))
        return [self._event("error", code=error.get("code"), message=str(error.get("message") or "failed"),
                            param=error.get("param")),
                self._snapshot("response.failed")]


async def translated(chat: AsyncIterator[bytes], writer: EventWriter,
                     before_end: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                     opening: list[dict[str, Any]] | None = None) -> AsyncGenerator[list[dict[str, Any]]]:
    """The chat stream's frames as batches of Responses events (those of one chat write together),
    after `opening` (by default `response.created`, `response.in_progress`); `before_end(response)`
    runs before the last event (the response is stored before a client could continue it), which
    comes alone in the last batch."""
    yield writer.start() if opening is None else opening
    try:
        async for chunk in chat:
            events: list[dict[str, Any]] = []
            end: list[dict[str, Any]] = []
            for payload in chat_payloads(bytes(chunk)):
                if payload is DONE:
                    if writer.response["status"] == "in_progress":
                        end = writer.complete()
                elif "error" in payload:
                    end = writer.fail(payload["error"])
                else:
                    events += writer.chat_chunk(payload)
            if events or end[:-1]:
                yield events + end[:-1]
            if end:
                if before_end is not None:
                    await before_end(writer.response)
                yield end[-1:]
                return
    finally:
        aclose = getattr(chat, "aclose", None)
        if aclose is not None:
            await aclose()


TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
