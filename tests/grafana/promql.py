"""Just enough PromQL lexing to say which metrics and labels an expression relies on.

Syntax is promtool's job (see promtool.py); this module only reads names:

- `names_in_expr(expr)`: metric names the expression selects;
- `labels_in_expr(expr)`: for each of those metrics, the labels the expression relies on — the
  selector's own matchers, plus every label in a `by`, `without`, `on`, `ignoring`,
  `group_left` or `group_right` list anywhere in the expression. That is stricter than PromQL
  (a grouping label need only exist on the operand it groups), and it holds for slm-server's
  queries; functions that invent labels (`label_replace`, `label_join`) are not understood.

Grafana's `$var`, `${var}`, `${var:format}` and `[[var]]` are read as opaque tokens, so a query
can be checked before its variables are substituted (`substitute()` does that).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<var>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\])
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*(?:\d+[a-zA-Z]+)*)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],@])
    """,
    re.VERBOSE,
)

GROUPING_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING_KEYWORDS | frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
)
AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass
class Selector:
    """One vector or matrix selector: `name{label op "value", ...}`."""

    name: str | None
    matchers: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass
class ParsedExpr:
    selectors: list[Selector]
    grouping_labels: set[str]


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read PromQL at {position}: {expr[position : position + 30]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group()))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _read_label_list(tokens: list[Token], i: int) -> tuple[list[str], int]:
    """Labels inside `( a, b )` starting at tokens[i] == '('; returns (labels, index after ')')."""
    labels: list[str] = []
    i += 1
    while i < len(tokens) and tokens[i].text != ")":
        if tokens[i].kind in ("ident", "string"):
            labels.append(tokens[i].text if tokens[i].kind == "ident" else _unquote(tokens[i].text))
        i += 1
    return labels, i + 1


def _read_matchers(tokens: list[Token], i: int) -> tuple[dict[str, tuple[str, str]], int]:
    """Matchers inside `{ ... }` starting at tokens[i] == '{'; returns (matchers, index after '}')."""
    matchers: dict[str, tuple[str, str]] = {}
    i += 1
    while i < len(tokens) and tokens[i].text != "}":
        if tokens[i].kind in ("ident", "string") and i + 2 < len(tokens):
            label = tokens[i].text if tokens[i].kind == "ident" else _unquote(tokens[i].text)
            op, value = tokens[i + 1], tokens[i + 2]
            if op.text in ("=", "!=", "=~", "!~"):
                matchers[label] = (op.text, _unquote(value.text) if value.kind == "string" else value.text)
                i += 3
                continue
        i += 1
    return matchers, i + 1


def parse(expr: str) -> ParsedExpr:
    tokens = tokenize(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.text == "[":  # range or subquery: durations only
            while i < len(tokens) and tokens[i].text != "]":
                i += 1
            i += 1
        elif token.kind == "ident" and token.text in GROUPING_KEYWORDS and following == "(":
            labels, i = _read_label_list(tokens, i + 1)
            grouping.update(labels)
        elif token.kind == "ident" and (
            token.text.lower() in KEYWORDS
            or following == "("
            or (token.text in AGGREGATIONS and following in ("by", "without"))
        ):
            i += 1  # keyword, function, or aggregation written `sum by (...) (...)`
        elif token.kind == "ident":
            selector = Selector(token.text)
            i += 1
            if i < len(tokens) and tokens[i].text == "{":
                selector.matchers, i = _read_matchers(tokens, i)
            selectors.append(selector)
        elif token.text == "{":  # bare selector: {__name__="x", ...}
            matchers, i = _read_matchers(tokens, i)
            name = matchers.get("__name__")
            selectors.append(Selector(name[1] if name and name[0] == "=" else None, matchers))
        else:
            i += 1
    return ParsedExpr(selectors, grouping)


def names_in_expr(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression."""
    return {s.name for s in parse(expr).selectors if s.name is not None}


def labels_in_expr(expr: str) -> dict[str, set[str]]:
    """For each selected metric, the labels the expression relies on (see the module docstring)."""
    parsed = parse(expr)
    used: dict[str, set[str]] = {}
    for selector in parsed.selectors:
        if selector.name is not None:
            labels = used.setdefault(selector.name, set())
            labels.update(label for label in selector.matchers if label != "__name__")
            labels.update(parsed.grouping_labels)
    return used


def iter_selectors(expr: str) -> Iterator[Selector]:
    yield from parse(expr).selectors


_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[A-Za-z_]\w*)\s*\)\s*$"
)


def variable_query_expr(query: str) -> tuple[str, str | None]:
    """A Grafana Prometheus variable query as (PromQL expression, label it reads or None).

    `label_values(sel, label)` -> (sel, label); `query_result(expr)` -> (expr, None); anything
    else (`metrics(...)`, `label_names()`) raises ValueError.
    """
    if match := _LABEL_VALUES.match(query):
        selector = match.group("selector")
        if selector is None:
            raise ValueError(f"label_values without a metric lists every series: {query!r}")
        return selector, match.group("label")
    if match := re.match(r"^\s*query_result\((.*)\)\s*$", query, re.DOTALL):
        return match.group(1), None
    raise ValueError(f"unsupported variable query: {query!r}")


_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def variables_in(text: str) -> set[str]:
    """Names of the Grafana variables a string refers to."""
    return {next(g for g in match.groups() if g) for match in _VARIABLE.finditer(text)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables by values; an unknown variable raises KeyError."""

    def replace(match: re.Match[str]) -> str:
        return values[next(g for g in match.groups() if g)]

    return _VARIABLE.sub(replace, expr)
