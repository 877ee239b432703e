"""Validate bodies against the official OpenAI spec, vendored in `tests/data/openai-openapi/`.

The spec is OpenAPI 3.1 with some `nullable: true` left over; those are read as "or null".
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

VENDORED = Path(__file__).resolve().parent / "data" / "openai-openapi" / "openapi.yaml"
SPEC = Path(os.environ.get("SLM_OPENAPI_SPEC") or VENDORED)
ROOT_URI = "urn:openai-openapi"


def _denull(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _denull(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_denull(v) for v in node]
    return node


@functools.cache
def _spec() -> dict[str, Any]:
    if not SPEC.is_file():
        raise FileNotFoundError(f"the OpenAI spec is missing at {SPEC} (set SLM_OPENAPI_SPEC)")
    with SPEC.open() as fh:
        data: dict[str, Any] = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return _response_nulls(_denull(data))


def _response_nulls(spec: dict[str, Any]) -> dict[str, Any]:
    """The Response object's `user` and `usage` "or null": the spec's own examples (`response.created`,
    `response.failed`) and the real API send `"usage": null, "user": null`, and the official client
    types both optional; the schema alone forgot it."""
    schemas = spec["components"]["schemas"]
    for name, field in (("ModelResponseProperties", "user"), ("Response", "usage")):
        holder = schemas[name] if name != "Response" else next(
            part for part in schemas["Response"]["allOf"] if "properties" in part and "usage" in part["properties"])
        properties = holder.get("properties", {})
        if field in properties:
            properties[field] = {"anyOf": [properties[field], {"type": "null"}]}
    return spec


@functools.cache
def validator(component: str) -> Draft202012Validator:
    spec = _spec()
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(ROOT_URI, resource)
    schema = {"$ref": f"{ROOT_URI}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=registry)


def assert_valid(component: str, body: Any) -> None:
    errors = sorted(validator(component).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        details = "\n".join(f"- {'/'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}" for e in errors[:5])
        raise AssertionError(f"response does not match {component}:\n{details}")


@functools.cache
def _event_components() -> dict[str, str]:
    """Each Responses stream event's `type` -> its component (the members of `ResponseStreamEvent`)."""
    out = {}
    for ref in _spec()["components"]["schemas"]["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        kind = _spec()["components"]["schemas"][name].get("properties", {}).get("type", {}).get("enum", [None])[0]
        if kind:
            out[kind] = name
    return out


def assert_valid_event(event: dict[str, Any]) -> None:
    """A Responses stream event, against the component its `type` names (a clearer failure than the anyOf)."""
    component = _event_components().get(event.get("type", ""))
    if component is None:
        raise AssertionError(f"the spec has no stream event of type {event.get('type')!r}")
    assert_valid(component, event)
