"""A whole answer assembled from a generation's deltas, choice by choice.

Text, reasoning text, refusal and logprobs are joined in order; tool call fragments are merged by
their index the way OpenAI streams them (id, type and name once, the arguments in pieces).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.backends.base import Delta


@dataclass
class Assembled:
    texts: dict[int, list[str]] = field(default_factory=dict)
    reasoning: dict[int, list[str]] = field(default_factory=dict)
    refusals: dict[int, list[str]] = field(default_factory=dict)
    logprobs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _calls: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def add(self, delta: Delta) -> None:
        index = delta.index
        self.texts.setdefault(index, []).append(delta.text)
        if delta.reasoning:
            self.reasoning.setdefault(index, []).append(delta.reasoning)
        if delta.refusal:
            self.refusals.setdefault(index, []).append(delta.refusal)
        if delta.logprobs:
            self.logprobs.setdefault(index, []).extend(delta.logprobs)
        for fragment in delta.tool_calls or []:
            calls = self._calls.setdefault(index, {})
            call = calls.setdefault(int(fragment.get("index", len(calls))),
                                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = fragment.get("id") or call["id"]
            call["type"] = fragment.get("type") or call["type"]
            function = fragment.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""

    def joined(self) -> dict[int, str]:
        return {i: "".join(parts) for i, parts in self.texts.items()}

    def calls(self) -> dict[int, list[dict[str, Any]]]:
        return {i: [calls[k] for k in sorted(calls)] for i, calls in self._calls.items()}

    def extras(self) -> dict[int, dict[str, Any]]:
        """Per choice, the message fields besides content and tool calls (`reasoning_content`, `refusal`)."""
        out: dict[int, dict[str, Any]] = {}
        for name, parts in (("reasoning_content", self.reasoning), ("refusal", self.refusals)):
            for index, pieces in parts.items():
                out.setdefault(index, {})[name] = "".join(pieces)
        return out
