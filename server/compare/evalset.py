"""Evaluation sets: one JSON object a line, validated strictly, errors naming the file and line.

A line looks like
    {"id": "q1", "prompt": "2+2?", "expected": "4", "scoring": "contains", "lang": "en"}
with `messages` (OpenAI chat messages) in place of `prompt` where a conversation is needed, and an
optional `system` prompt put before either. `expected` is, by scoring method:
    exact, contains   a string (or number), or a list of acceptable strings
    choice            one letter A-D
    json-fields       an object: the fields the answer's first JSON object must hold
    judge             absent: only a judge model (`--judge`) grades the answer
A multi-turn item (as MT-Bench) gives `turns`, a list of user messages, in place of `prompt`: each
turn is asked with the model's own earlier answers fed back, and each is judged; its scoring is
`judge`, and `reference` may give one reference answer per turn (a list) for the judge. Any item may
name a `category` (writing, extraction, reasoning...) for the per-category breakdown, and a
single-turn item a `reference` string.
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

Scoring = Literal["exact", "contains", "choice", "json-fields", "judge"]
SCORINGS: tuple[str, ...] = get_args(Scoring)
Expected: TypeAlias = tuple[str, ...] | dict[str, Any]

DEFAULT_EVAL_NAME = "default_eval.jsonl"
MULTITURN_EVAL_NAME = "multiturn_eval.jsonl"
BUILTIN_SETS = (DEFAULT_EVAL_NAME, MULTITURN_EVAL_NAME)
BUILTIN = "builtin:"
ROLES = ("system", "user", "assistant")
FIELDS = ("id", "prompt", "messages", "turns", "system", "expected", "scoring", "lang", "category", "reference")


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
    turns: tuple[str, ...] = ()  # a multi-turn item's user messages; `messages` then holds the system prompt
    category: str | None = None
    references: tuple[str, ...] = ()  # for the judge: one per turn (a single-turn item has at most one)

    @property
    def turn_count(self) -> int:
        return max(1, len(self.turns))


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
    """Load `path`, or a set shipped in `server/compare/data/`: the default one when `path` is None,
    another by its name as `builtin:NAME` (`builtin:multiturn_eval.jsonl`)."""
    if path is None or str(path).startswith(BUILTIN):
        name = DEFAULT_EVAL_NAME if path is None else str(path).removeprefix(BUILTIN)
        source = BUILTIN + name
        shipped = resources.files("server.compare").joinpath("data").joinpath(name)
        if not shipped.is_file():
            raise EvalFileError(source, f"no such built-in set (shipped: {', '.join(BUILTIN_SETS)})")
        data = shipped.read_bytes()
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
    if scoring == "judge":
        if "expected" in obj:
            raise fail("field 'expected' is not used with scoring 'judge' (give a 'reference' for the judge)")
        expected: Expected = ()
    elif "turns" in obj:
        raise fail("an item with 'turns' is graded by the judge: give \"scoring\": \"judge\"")
    elif "expected" not in obj:
        raise fail("field 'expected' is required")
    else:
        try:
            expected = _expected(scoring, obj["expected"])
        except ValueError as exc:
            raise fail(f"field 'expected': {exc}") from None

    for name in ("lang", "category"):
        value = obj.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(f"field {name!r} must be a non-empty string")
    try:
        messages, turns = _messages(obj)
        references = _references(obj.get("reference"), turns)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return EvalItem(
        item_id, messages, expected, scoring, obj.get("lang"), line, turns, obj.get("category"), references
    )


def _references(value: Any, turns: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not turns:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("field 'reference' must be a non-empty string")
        return (value,)
    if not isinstance(value, list) or len(value) != len(turns) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field 'reference' must be a list of {len(turns)} strings, one per turn")
    return tuple(value)


def _messages(obj: dict[str, Any]) -> tuple[tuple[ChatMessage, ...], tuple[str, ...]]:
    if sum(name in obj for name in ("prompt", "messages", "turns")) != 1:
        raise ValueError("give exactly one of 'prompt', 'messages' or 'turns'")
    out: list[ChatMessage] = []
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str) or not system.strip():
            raise ValueError("field 'system' must be a non-empty string")
        out.append({"role": "system", "content": system})
    if "turns" in obj:
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError("field 'turns' must be a non-empty list of user messages")
        if not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError("each of 'turns' must be a non-empty string")
        return tuple(out), tuple(turns)
    return _chat(obj, out), ()


def _chat(obj: dict[str, Any], out: list[ChatMessage]) -> tuple[ChatMessage, ...]:
    if "prompt" in obj:
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
