"""The shape a decoded request body may have: nesting and Unicode, refused with the parameter named."""

from __future__ import annotations

import json

import pytest

from server.errors import InvalidRequestError
from server.json_checks import MAX_BODY_DEPTH, MAX_SCHEMA_DEPTH, check_body, check_decodable, json_depth


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def refusal(text: str) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        try:
            data = json.loads(text)
        except RecursionError:
            check_decodable(text)
            raise AssertionError("too deep for json.loads, and not named") from None
        check_body(data, text)
    return info.value


def test_depth_counts_containers_without_recursing() -> None:
    assert json_depth(1) == 0 and json_depth({}) == 1 and json_depth({"a": [1, {"b": []}]}) == 4
    deep: list[object] = []
    for _ in range(50_000):  # far past Python's recursion limit
        deep = [deep]
    assert json_depth(deep) == 50_001
    assert json_depth(deep, stop_above=10) == 11


def test_a_body_nested_past_the_bound_names_the_field() -> None:
    error = refusal('{"model": "m", "metadata": {"x": ' + nested(MAX_BODY_DEPTH) + "}}")
    assert error.param == "metadata.x" and str(MAX_BODY_DEPTH) in error.message


@pytest.mark.parametrize("levels", [MAX_BODY_DEPTH, 2000])  # the second is past json.loads' own limit
def test_a_deep_schema_names_the_schema(levels: int) -> None:
    schema = '{"properties": {"a": ' * levels + "{}" + "}}" * levels
    text = '{"tools": [{"type": "function", "function": {"name": "f", "parameters": ' + schema + "}}]}"
    error = refusal(text)
    assert error.param == "tools.0.function.parameters" and str(MAX_SCHEMA_DEPTH) in error.message


def test_what_nests_within_the_bound_passes() -> None:
    text = json.dumps({"messages": [{"content": "[[[{{{"}] * 300, "x": json.loads(nested(MAX_BODY_DEPTH - 1))})
    check_body(json.loads(text), text)


@pytest.mark.parametrize(("text", "param"), [
    ('{"messages": [{"role": "user", "content": "a \\ud800 b"}]}', "messages.0.content"),
    ('{"stop": ["ok", "\\udfff"]}', "stop.1"),
    ('{"logit_bias": {"\\ud83d": 1}}', "logit_bias"),  # a key: the object holding it is named
])
def test_a_lone_surrogate_is_invalid_unicode_named_by_where_it_is(text: str, param: str) -> None:
    error = refusal(text)
    assert (error.param, error.code) == (param, "invalid_unicode")


def test_a_surrogate_pair_is_one_character_and_passes() -> None:
    text = '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    check_body(json.loads(text), text)
