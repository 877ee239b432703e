"""Bounds on what a JSON schema may ask of llama.cpp's grammar, checked before any worker sees it.

A schema (`response_format.json_schema.schema`, a tool's `function.parameters`) becomes GBNF in
llama-cpp-python's converter and is then parsed by llama.cpp's recursive-descent grammar parser.
Measured on llama-cpp-python 0.3.36 with SmolLM2's vocabulary, each case in a subprocess:

    maxLength / maxItems / `{0,N}` in a pattern   N nested groups: N = 1,000 compiles in 3 ms;
                                                  1,024 to 10,000 are refused by the parser ("exceeds
                                                  sane defaults"); 20,000 overflows its stack (SIGSEGV)
    minLength / minItems / `{N}`                  N copies: 1,000,000 took 0.13 s and +40 MB; the
                                                  memory grows linearly (20,000,000 took 1.9 GB)
    a nullable group under a bounded repetition   `(a?){0,100}`, `(a{0,3}){0,100}`: sampling did not
                                                  finish 20 tokens in 60 s (every way to split the
                                                  text is a grammar stack); `(a{0,10}){0,10}` 8x slower
    an object with k optional properties          the converter is quadratic in k: 0.2 s at 200,
                                                  1.5 s at 500
    nesting                                       the grammar grows with depth squared (400 levels:
                                                  660 KB); Python's own recursion ends near 1,000

So each count stays at or below `MAX_REPEAT` (the largest the parser accepts), the whole request's
counts at or below `MAX_TOTAL_REPEAT` (bounding the grammar's size), nesting at `MAX_DEPTH`,
schema nodes at `MAX_NODES`, properties of one object at `MAX_PROPERTIES`, and a pattern may not
repeat a group that can match the empty string a bounded number of times above one. The walk is
iterative, so a schema nested deeper than Python's recursion limit is refused, not a traceback.
Anything past a bound is `SchemaLimitError`, a 400 whose `param` is the path of the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import SchemaLimitError

MAX_REPEAT = 1000  # one length, item count or pattern repetition (llama.cpp refuses more than ~1,000)
MAX_TOTAL_REPEAT = 20_000  # all of them in one request: ~20 ms of parsing, a few MB of grammar
MAX_DEPTH = 32  # nested schemas (OpenAI's structured outputs allow 10 levels)
MAX_NODES = 2_000  # schema objects in one request
MAX_PROPERTIES = 200  # properties of one object (the converter is quadratic in the optional ones)

COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                  "minContains", "maxContains")
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
               "propertyNames", "unevaluatedProperties", "unevaluatedItems")


@dataclass
class Budget:
    """What one request's schemas have used so far (a request may carry several)."""

    nodes: int = 0
    repeat: int = 0


def check_schema(schema: Any, where: str, budget: Budget | None = None) -> None:
    """Refuse (`SchemaLimitError`) a schema past a bound; `where` names it for the error's `param`."""
    budget = budget if budget is not None else Budget()
    stack: list[tuple[Any, str, int]] = [(schema, where, 1)]
    while stack:
        node, path, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if depth > MAX_DEPTH:
            raise SchemaLimitError(f"The schema at '{path}' is nested more than {MAX_DEPTH} levels deep.",
                                   param=path)
        budget.nodes += 1
        if budget.nodes > MAX_NODES:
            raise SchemaLimitError(f"The schemas of this request have more than {MAX_NODES} parts "
                                   f"(found at '{path}').", param=path)
        _check_counts(node, path, budget)
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            budget.repeat += check_pattern(pattern, f"{path}.pattern")
            _check_total(budget, f"{path}.pattern")
        props = node.get("properties")
        if isinstance(props, dict) and len(props) > MAX_PROPERTIES:
            raise SchemaLimitError(f"The object at '{path}' has more than {MAX_PROPERTIES} properties.",
                                   param=f"{path}.properties")
        stack.extend(_children(node, path, depth + 1))


def _check_counts(node: dict[str, Any], path: str, budget: Budget) -> None:
    largest = 0
    for name in COUNT_KEYWORDS:
        value = node.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value > MAX_REPEAT:
            raise SchemaLimitError(f"'{name}' is at most {MAX_REPEAT} on this server (got {value}).",
                                   param=f"{path}.{name}")
        largest = max(largest, int(value))
    budget.repeat += largest
    _check_total(budget, path)


def _check_total(budget: Budget, path: str) -> None:
    if budget.repeat > MAX_TOTAL_REPEAT:
        raise SchemaLimitError(f"The schemas of this request ask for more than {MAX_TOTAL_REPEAT} repetitions "
                               f"in all (lengths, item counts, pattern repetitions; passed at '{path}').",
                               param=path)


def _children(node: dict[str, Any], path: str, depth: int) -> list[tuple[Any, str, int]]:
    out: list[tuple[Any, str, int]] = []
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            out += [(child, f"{path}.{key}.{name}", depth) for name, child in value.items()]
    for key in _SCHEMA_LISTS:
        value = node.get(key)
        if isinstance(value, list):
            out += [(child, f"{path}.{key}.{i}", depth) for i, child in enumerate(value)]
    for key in _SCHEMA_ONE:
        value = node.get(key)
        if isinstance(value, dict):
            out.append((value, f"{path}.{key}", depth))
        elif isinstance(value, list):
            out += [(child, f"{path}.{key}.{i}", depth) for i, child in enumerate(value)]
    return out


@dataclass
class _Group:
    outer_before: bool = True  # the enclosing alternative's nullability before this group
    nullable_alt: bool = True  # the alternative being read can match ""
    nullable: bool = False  # some finished alternative can match ""
    inner: int = 1  # the largest product of nested repetitions inside it


def check_pattern(pattern: str, path: str) -> int:
    """Refuse a pattern past the bounds; return the repetitions it asks for (its share of the budget).

    Reads just enough of the regex syntax: escapes, classes, groups, alternation, quantifiers."""
    groups = [_Group()]
    atom: bool | None = None  # can the last atom match ""? (None: no atom a quantifier could repeat)
    before = True  # the alternative's nullability before that atom
    inner = 1  # the repetitions inside that atom (a group's)
    total = 0
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        quantifier = _quantifier(pattern, i) if atom is not None else None
        if quantifier is not None:
            low, high, i = quantifier
            count = max(low, high if high is not None else low)
            if count > MAX_REPEAT:
                raise SchemaLimitError(f"A repetition in the pattern at '{path}' is at most {MAX_REPEAT} "
                                       f"on this server (got {count}).", param=path)
            if atom and high is not None and high > 1:
                raise SchemaLimitError(f"The pattern at '{path}' repeats a group that can match the empty "
                                       "string a bounded number of times; such grammars are too slow to "
                                       "sample. Make the group match at least one character.", param=path)
            scale = inner * max(1, count)
            if scale > MAX_REPEAT:
                raise SchemaLimitError(f"The nested repetitions in the pattern at '{path}' multiply to more "
                                       f"than {MAX_REPEAT}.", param=path)
            total += scale
            groups[-1].inner = max(groups[-1].inner, scale)
            if low == 0:  # the atom may now match nothing: the alternative is as it was before it
                groups[-1].nullable_alt = before
            atom = None
            continue
        if c == "(":
            if len(groups) > MAX_DEPTH:
                raise SchemaLimitError(f"The pattern at '{path}' nests groups more than {MAX_DEPTH} deep.",
                                       param=path)
            groups.append(_Group(outer_before=groups[-1].nullable_alt))
            i += 3 if pattern.startswith("?:", i + 1) else 1
            atom = None
            continue
        if c == ")" and len(groups) > 1:
            done = groups.pop()
            atom, before, inner = done.nullable or done.nullable_alt, done.outer_before, done.inner
            groups[-1].inner = max(groups[-1].inner, inner)
            groups[-1].nullable_alt = before and atom
            i += 1
            continue
        if c == "|":
            groups[-1].nullable = groups[-1].nullable or groups[-1].nullable_alt
            groups[-1].nullable_alt = True
            atom = None
            i += 1
            continue
        if c in "^$":
            atom = None
            i += 1
            continue
        before = groups[-1].nullable_alt
        groups[-1].nullable_alt = False
        atom, inner = False, 1
        i = _skip_class(pattern, i) if c == "[" else i + (2 if c == "\\" else 1)
    return total


def _skip_class(pattern: str, i: int) -> int:
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _quantifier(pattern: str, i: int) -> tuple[int, int | None, int] | None:
    """(min, max or None, index after it) for a quantifier at `i`, else None."""
    c = pattern[i]
    if c in "*+?":
        bounds: dict[str, tuple[int, int | None]] = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        i += 1
        if i < len(pattern) and pattern[i] in "?+":  # lazy / possessive marker
            i += 1
        return bounds[c][0], bounds[c][1], i
    if c != "{":
        return None
    end = pattern.find("}", i)
    if end < 0:
        return None
    body = pattern[i + 1:end]
    parts = body.split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() or (k == 1 and not p.strip()) for k, p in enumerate(parts)):
        return None
    digits = [p.strip() for p in parts]
    if any(len(d) > 9 for d in digits):
        return 10**9, 10**9, end + 1
    low = int(digits[0])
    high: int | None = low if len(parts) == 1 else (int(digits[1]) if digits[1] else None)
    return low, high, end + 1


def check_request(data: Any) -> None:
    """Bound every schema a raw chat request body carries, before the body is parsed further."""
    if not isinstance(data, dict):
        return
    budget = Budget()
    fmt = data.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        check_schema(fmt["json_schema"].get("schema"), "response_format.json_schema.schema", budget)
    tools = data.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict):
                check_schema(function.get("parameters"), f"tools.{i}.function.parameters", budget)
