"""Paths of the grafana/ files and the PromQL found in the dashboard and the alert rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .promql import variable_query_expr

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "slm-server.json"
ALERT_RULES_PATH = GRAFANA / "alerts" / "slm-server-rules.yaml"
ALERT_TESTS_PATH = GRAFANA / "alerts" / "slm-server-rules.test.yaml"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "provider.yaml"
GENERATOR_PATH = GRAFANA / "generate_dashboard.py"

# Grafana's own variables that may appear in queries.
BUILTIN_VARIABLES = frozenset(
    {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms", "__all"}
)

# What the live test substitutes for each variable: every model, backend and instance.
LIVE_VALUES = {
    "model": ".*",
    "backend": ".*",
    "instance": ".*",
    "datasource": "prometheus",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}


@dataclass(frozen=True)
class Query:
    """One PromQL expression found in the dashboard."""

    kind: str  # "panel", "variable" or "annotation"
    where: str  # human-readable location, used as the test id
    expr: str
    label: str | None = None  # the label a label_values() variable reads


Json = dict[str, Any]


def load_dashboard() -> Json:
    data: Json = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return data


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def iter_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, rows included, also those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: Json) -> list[Query]:
    found: list[Query] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"panel {panel['id']} {panel.get('title', '')!r} {target.get('refId', '')}"
                found.append(Query("panel", where, target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        raw = variable.get("query")
        text = raw.get("query", "") if isinstance(raw, dict) else raw
        expr, label = variable_query_expr(text)
        found.append(Query("variable", f"variable ${variable['name']}", expr, label))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("expr") or annotation.get("target", {}).get("expr")
        if expr:
            found.append(Query("annotation", f"annotation {annotation['name']!r}", expr))
    return found


def alert_rules() -> list[Json]:
    rules: list[Json] = []
    for group in load_yaml(ALERT_RULES_PATH)["groups"]:
        rules.extend(group["rules"])
    return rules
