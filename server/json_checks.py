"""What a decoded JSON request body may hold: bounded nesting, and text that is Unicode.

`json.loads` accepts two things that later steps cannot handle, and each once ended in an
unhandled 500 with a traceback of ~150 KB:

- structures nested hundreds deep: recursive consumers (jsonschema's schema check, the
  JSON-schema-to-grammar converter, pydantic's serializer of the queued job) raise
  `RecursionError` or refuse to serialize. A schema (a tool's `parameters`,
  `response_format.json_schema.schema`) may nest at most `MAX_SCHEMA_DEPTH` containers, and a
  whole body at most `MAX_BODY_DEPTH` (a backstop for the fields that are not schemas);
- a lone surrogate escape (`"\\ud800"`): a Python string that cannot be encoded as UTF-8 (the
  queue, the logs and every provider need UTF-8).

Both are refused with a 400 naming where in the body they are. Depth is counted in JSON
containers: `{"type": "object", "properties": {"a": {...}}}` is two levels per schema level.
"""

from __future__ import annotations

import re
from json import JSONDecoder
from typing import Any

from server.errors import InvalidRequestError, SchemaLimitError

# 64 containers = 32 schema levels through `properties`: far more than OpenAI's structured outputs
# allow (10 levels), and far from where the recursive consumers fail (about 190 levels for
# jsonschema's check at Python's default recursion limit).
MAX_SCHEMA_DEPTH = 64
# Above any schema's depth plus where schemas sit in a body; below pydantic's serializer limit (~255).
MAX_BODY_DEPTH = 128

# A JSON escape of a UTF-16 surrogate (high or low); only bodies holding one need a full walk.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# The body parameters that hold JSON schemas, named whole when something below them is too deep.
_SCHEMA_PARAMS: tuple[tuple[str | None, ...], ...] = (
    ("tools", None, "function", "parameters"),
    ("response_format", "json_schema", "schema"),
)

# What shapes JSON text: a string's opening quote and the structural characters (anything else is skipped)
_STRUCTURE = re.compile(r'["{}\[\],]')
# How many tokens that reading may take (the refusal is the same without a name; this bounds its cost)
_SCAN_TOKENS = 50_000

Path = tuple[str | int, ...]


def json_depth(value: Any, *, stop_above: int | None = None) -> int:
    """How many containers deep `value` nests (a scalar is 0); iterative, so any depth is safe.

    With `stop_above`, the walk ends as soon as that depth is exceeded (returning `stop_above + 1`).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if stop_above is not None and deepest > stop_above:
            return deepest
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def check_schema_depth(schema: Any) -> None:
    """Raise ValueError (a validator's 400 naming the field) for a schema nested too deeply."""
    if json_depth(schema, stop_above=MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep")


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _walk(value: Any, *, unicode: bool, max_depth: int) -> tuple[str, Path] | None:
    """The first problem found: ("unicode", path of the string) or ("depth", path below the limit)."""
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if unicode and not _is_unicode(node):
                return "unicode", path
            continue
        if not isinstance(node, dict | list):
            continue
        if len(path) >= max_depth:
            return "depth", path
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if unicode and isinstance(key, str) and not _is_unicode(key):
                return "unicode", path
            if isinstance(child, str | dict | list):
                stack.append((child, (*path, key)))
    return None


def _param(path: Path) -> tuple[str, bool]:
    """The parameter to name for a node too deep at `path`, and whether it is a schema."""
    for pattern in _SCHEMA_PARAMS:
        head = path[: len(pattern)]
        if len(head) == len(pattern) and all(p is None or p == h for p, h in zip(pattern, head, strict=True)):
            return ".".join(map(str, head)), True
    return ".".join(map(str, path[:2])), False


def _deep_path_in_text(text: str, max_depth: int) -> Path | None:
    """Where JSON `text` first nests deeper than `max_depth`, read without building it (a body too deep for
    `json.loads`, whose recursion gives up first, still gets a 400 naming the parameter). Strings are
    skipped by json's own (C) scanner; at most `_SCAN_TOKENS` tokens are read."""
    path: list[str | int] = []
    kinds: list[str] = []  # "{" or "[" for each open container
    key: str | int | None = None  # the key (or index) the next value will have
    pos = 0
    decoder = JSONDecoder()
    for _ in range(_SCAN_TOKENS):
        match = _STRUCTURE.search(text, pos)
        if match is None:
            return None
        token, pos = match.group(), match.end()
        if token == '"':
            try:
                value, pos = decoder.raw_decode(text, pos - 1)
            except ValueError:
                return None
            if kinds and kinds[-1] == "{" and key is None:
                key = value
        elif token in ("{", "["):
            if kinds:
                path.append(key if key is not None else 0)
            if len(kinds) >= max_depth:
                return tuple(path)
            kinds.append(token)
            key = 0 if token == "[" else None
        elif token in ("}", "]"):
            if kinds:
                kinds.pop()
            key = path.pop() if path else None
        else:  # ","
            key = key + 1 if kinds and kinds[-1] == "[" and isinstance(key, int) else None
    return None


def check_decodable(text: str) -> None:
    """Called when `json.loads(text)` gave up on depth: a 400 naming where, if the text says where."""
    path = _deep_path_in_text(text, MAX_BODY_DEPTH)
    if path:
        _refuse_depth(path)


def _refuse_depth(path: Path) -> None:
    param, is_schema = _param(path)
    if is_schema:  # what `server.schema_limits` says of a schema too deep for the grammar, found sooner
        raise SchemaLimitError(f"Invalid value for '{param}': the schema is nested more than "
                               f"{MAX_SCHEMA_DEPTH} levels deep.", param=param)
    raise InvalidRequestError(f"Invalid value for '{param}': a request body may nest at most "
                              f"{MAX_BODY_DEPTH} levels.", param=param)


def check_body(data: Any, text: str) -> None:
    """Refuse a decoded body (`text` is its JSON) with lone surrogates or nested over `MAX_BODY_DEPTH`."""
    unicode = _SURROGATE_ESCAPE.search(text) is not None
    # a body with fewer brackets than the limit cannot nest deeper than it: no walk for most requests
    deep = text.count("{") + text.count("[") > MAX_BODY_DEPTH
    if not (unicode or deep):
        return
    found = _walk(data, unicode=unicode, max_depth=MAX_BODY_DEPTH if deep else 1 << 30)
    if found is None:
        return
    kind, path = found
    if kind == "unicode":
        param = ".".join(map(str, path)) or None
        where = f"'{param}'" if param else "the request body"
        raise InvalidRequestError(
            f"Invalid Unicode in {where}: the text holds a lone surrogate escape (such as \\ud800), "
            "which is not a character.", param=param, code="invalid_unicode")
    _refuse_depth(path)
