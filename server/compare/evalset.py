"""Evaluation sets: one JSON object a line, validated strictly, errors naming the file and line.

A line looks like
    {"id": "q1", "prompt": "2+2?", "expected": "4", "scoring": "contains", "lang": "en"}
with `messages` (OpenAI chat messages) in place of `prompt` where a conversation is needed, and an
optional `system` prompt put before either. `expected` is, by scoring method:
    exact, contains   a string (or number), or a list of acceptable strings
    choice            one letter A-D
    json-fields       an object: the fields the answer's first JSON object must hold
Blank lines are skipped; unknown fields are refused (a typo must not pass silently).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypedDict, cast, get_args

from server.compare.errors import EvalFileError

Scoring = Literal["exact", "contains", "choice", "json-fields"]
SCORINGS: tuple[str, ...] = get_args(Scoring)
Expected: TypeAlias = tuple[str, ...] | dict[str, Any]

DEFAULT_EVAL_NAME = "default_eval.jsonl"
ROLES = ("system", "user", "assistant")
FIELDS = ("id", "prompt", "messages", "system", "expected", "scoring", "lang")


class ChatMessage(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class EvalItem:
    id: str
    messages: tuple[ChatMessage, ...]
    expected: Expected
    scoring: Scoring
    lang: str | None = None
    line: int = 0


@dataclass(frozen=True)
class EvalSet:
    source: str
    items: tuple[EvalItem, ...]
    sha256: str

    def head(self, limit: int | None) -> EvalSet:
        if limit is None:
            return self
        return EvalSet(self.source, self.items[:limit], self.sha256)


def load_eval_set(path: Path | None = None) -> EvalSet:
    """Load `path`, or the built-in set shipped in `server/compare/data/` when `path` is None."""
    if path is None:
        source = f"builtin:{DEFAULT_EVAL_NAME}"
        data = resources.files("server.compare").joinpath("data").joinpath(DEFAULT_EVAL_NAME).read_bytes()
    else:
        source = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EvalFileError(source, "no such file") from None
        except OSError as exc:
            raise EvalFileError(source, f"cannot read: {exc.strerror or exc}") from None
    return EvalSet(source, tuple(parse_eval_bytes(data, source)), hashlib.sha256(data).hexdigest())


def parse_eval_bytes(data: bytes, source: str) -> list[EvalItem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise EvalFileError(source, "not valid UTF-8", line=line) from None
    return parse_eval_text(text, source)


def parse_eval_text(text: str, source: str) -> list[EvalItem]:
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        item = _parse_line(raw, source, number)
        if item.id in seen:
            raise EvalFileError(
                source, f"duplicate id {item.id!r} (first on line {seen[item.id]})", line=number
            )
        seen[item.id] = number
        items.append(item)
    if not items:
        raise EvalFileError(source, "no evaluation items (the file is empty)")
    return items


def _parse_line(raw: str, source: str, line: int) -> EvalItem:
    def fail(message: str) -> EvalFileError:
        return EvalFileError(source, message, line=line)

    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, got {_kind(obj)}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise fail(f"unknown field {unknown[0]!r} (allowed: {', '.join(FIELDS)})")

    item_id = obj.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        raise fail("field 'id' must be a non-empty string")

    scoring = obj.get("scoring")
    if scoring not in SCORINGS:
        raise fail(f"field 'scoring' must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    scoring = cast(Scoring, scoring)
    if "expected" not in obj:
        raise fail("field 'expected' is required")
    try:
        expected = _expected(scoring, obj["expected"])
    except ValueError as exc:
        raise fail(f"field 'expected': {exc}") from None

    lang = obj.get("lang")
    if lang is not None and not isinstance(lang, str):
        raise fail("field 'lang' must be a string")
    try:
        messages = _messages(obj)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return EvalItem(item_id, messages, expected, scoring, lang, line)


def _messages(obj: dict[str, Any]) -> tuple[ChatMessage, ...]:
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        raise ValueError("give exactly one of 'prompt' or 'messages'")
    out: list[ChatMessage] = []
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str) or not system.strip():
            raise ValueError("field 'system' must be a non-empty string")
        out.append({"role": "system", "content": system})
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("field 'prompt' must be a non-empty string")
        out.append({"role": "user", "content": prompt})
        return tuple(out)
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(f"{where} must be an object with exactly 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"{where}.content must be a string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise ValueError("the last message must not be the assistant's (nothing left to answer)")
    return tuple(out)


def _expected(scoring: Scoring, value: Any) -> Expected:
    if scoring == "choice":
        if not isinstance(value, str) or value.strip().upper() not in ("A", "B", "C", "D"):
            raise ValueError(f"a choice letter A-D is required; got {value!r}")
        return (value.strip().upper(),)
    if scoring == "json-fields":
        if not isinstance(value, dict) or not value:
            raise ValueError("a non-empty object of the fields to find is required")
        return value
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for one in values:
        if isinstance(one, bool) or not isinstance(one, str | int | float):
            raise ValueError(f"a string, a number or a list of them is required; got {_kind(one)}")
        text = str(one)
        if not text.strip():
            raise ValueError("an empty expected answer matches everything")
        out.append(text)
    if not out:
        raise ValueError("the list of acceptable answers is empty")
    return tuple(out)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )
