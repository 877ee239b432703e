"""A chat request's tools and response format: what the models accept, refuse, and hand a local worker."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.json_checks import MAX_SCHEMA_DEPTH
from server.protocol_tools import FunctionDef, NamedToolChoice, ResponseFormat, Tool


def deep_object(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def refused(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


def test_a_function_takes_an_object_schema() -> None:
    tool = Tool.model_validate({"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    assert tool.function.name == "get_weather" and tool.function.parameters is not None
    assert FunctionDef.model_validate({"name": "no-args"}).parameters is None


def test_parameters_that_are_no_schema_or_no_object_are_refused() -> None:
    assert "not a valid JSON schema" in refused(FunctionDef, {"name": "f", "parameters": {"type": 12}})
    assert "must describe an object" in refused(FunctionDef, {"name": "f", "parameters": {"type": "string"}})


def test_a_schema_too_deep_is_refused_before_it_is_checked() -> None:
    FunctionDef.model_validate({"name": "f", "parameters": deep_object(MAX_SCHEMA_DEPTH // 2 - 1)})
    assert "deep" in refused(FunctionDef, {"name": "f", "parameters": deep_object(MAX_SCHEMA_DEPTH // 2)})
    assert "deep" in refused(ResponseFormat, {"type": "json_schema",
                                              "json_schema": {"name": "s", "schema": deep_object(200)}})


def test_names_and_unknown_fields() -> None:
    assert "pattern" in refused(FunctionDef, {"name": "has space"})
    assert "extra" in refused(Tool, {"type": "function", "function": {"name": "f"}, "cache": True})
    choice = NamedToolChoice.model_validate({"type": "function", "function": {"name": "f"}})
    assert choice.model_dump() == {"type": "function", "function": {"name": "f"}}


def test_response_format_as_a_worker_gets_it() -> None:
    assert ResponseFormat.model_validate({"type": "text"}).for_worker() is None
    assert ResponseFormat.model_validate({"type": "json_object"}).for_worker() == {"type": "json_object"}
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    named = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    assert named.for_worker() == {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    bare = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "s"}})
    assert bare.for_worker() == {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    assert "'json_schema' is required" in refused(ResponseFormat, {"type": "json_schema"})
