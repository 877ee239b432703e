"""Validate rendered objects: Kubernetes kinds with kubernetes-validate (strict: unknown fields are
errors), custom resources (KEDA, prometheus-operator) against the openAPIV3Schema of their CRDs,
kept in schemas/ (see schemas/refresh.py for where each came from)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Oldest Kubernetes we promise (autoscaling/v2, policy/v1, kustomize v5 era) and the newest
# kubernetes-validate knows.
MIN_KUBERNETES = "1.29"


def kubernetes_versions() -> list[str]:
    return [MIN_KUBERNETES, kubernetes_validate.latest_version()]


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema."""
    found = {}
    for path in sorted(SCHEMAS.glob("*_*_*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        crd = document["x-crd"]
        found[(f"{crd['group']}/{crd['version']}", crd["kind"])] = strict(document["schema"])
    return found


def strict(schema: Any) -> Any:
    """Structural schema -> JSON schema that refuses unknown fields (as the API server's strict
    field validation does) and honours `nullable`."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in result
        and "additionalProperties" not in result
        and not result.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    if result.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    return result


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in crd_schemas()


def validate(obj: dict[str, Any], version: str, where: str | None = None) -> list[str]:
    """Problems of one object against Kubernetes `version` (empty when valid)."""
    where = where or f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in crd_schemas():
        validator = jsonschema.Draft7Validator(crd_schemas()[key])
        problems = [
            f"{where}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)
        ]
        # The CRD leaves metadata open; check it as the ObjectMeta it is.
        carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        return problems + validate(carrier, version, where)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: no schema: {exc.message}"]
    return []
