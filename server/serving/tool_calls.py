"""Turn model text back into OpenAI `tool_calls`, whole or streamed.

While tools may be called, a choice's text is held back as long as it is (or may still become)
a call; plain answers pass through as content as soon as they are clearly not a call. A call cut
short (by `max_tokens`) never reaches the client as raw markup: the calls that parse are returned
(the finish reason stays "length"), else only the text before the markup is.
"""

from __future__ import annotations

import uuid
from typing import Any

from server.tool_format import CALL_OPEN, parse_calls


def settle(text: str, finish_reason: str) -> tuple[str | None, list[dict[str, Any]] | None, str]:
    """(content, calls, finish reason) of one choice's whole text, when tools may be called."""
    found = parse_calls(text)
    if found:
        return None, openai_calls(found), "length" if finish_reason == "length" else "tool_calls"
    return without_markup(text), None, finish_reason


def without_markup(text: str) -> str:
    """The text before an unfinished or malformed call's markup (all of it when there is none)."""
    return text.split(CALL_OPEN, 1)[0].rstrip() if CALL_OPEN in text else text


def openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]


class ToolCallFilter:
    def __init__(self) -> None:
        self._held = ""
        self._plain = False

    def feed(self, text: str) -> str:
        """The part of `text` that can go out as content now."""
        if self._plain:
            return text
        self._held += text
        head = self._held.lstrip()
        if not head or CALL_OPEN.startswith(head) or head.startswith(CALL_OPEN):
            return ""
        self._plain = True
        out, self._held = self._held, ""
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]] | None]:
        """(content still held, calls) at the end of the choice."""
        held, self._held = self._held, ""
        calls = parse_calls(held) if held else None
        return ("", openai_calls(calls)) if calls else (without_markup(held), None)
