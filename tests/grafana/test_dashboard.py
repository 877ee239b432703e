"""Static checks of grafana/dashboards/slm-server.json: structure, PromQL, metrics and labels."""

from __future__ import annotations

import importlib.util
import itertools
import re
from types import ModuleType

import pytest

from . import promtool
from .dashboard import (
    BUILTIN_VARIABLES,
    DASHBOARD_PATH,
    GENERATOR_PATH,
    LIVE_VALUES,
    Json,
    Query,
    iter_panels,
    load_dashboard,
    queries,
)
from .exported_metrics import EXPORTED_METRICS, WORKER_METRICS, series_labels
from .promql import iter_selectors, labels_in_expr, names_in_expr, substitute, variables_in

DASHBOARD = load_dashboard()
QUERIES = queries(DASHBOARD)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["SLO overview", "Latency", "Load", "Errors", "Routing", "Residency", "Model swaps"]
# The one selector allowed to leave out $model: a router's share per target divides by all the
# router's requests, whatever targets $model selects (else the shares would not add up to 1).
ROUTER_TOTAL = 'sum by (router) (rate(slm_router_decisions_total{instance=~"$instance"}[$__rate_interval]))'


def by_row(dashboard: Json) -> dict[str, list[Json]]:
    rows: dict[str, list[Json]] = {}
    current: list[Json] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = rows.setdefault(panel["title"], list(panel.get("panels", [])))
        else:
            current.append(panel)
    return rows


def exprs_of(panels: list[Json]) -> list[str]:
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def variable(name: str) -> Json:
    found: list[Json] = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"variable {name!r} defined {len(found)} times"
    return found[0]


# --- identity and variables ---------------------------------------------------------------------


def test_dashboard_identity() -> None:
    assert DASHBOARD["uid"] == "slm-server"
    assert DASHBOARD["title"]
    assert DASHBOARD["id"] is None  # provisioned dashboards carry no database id
    assert 39 <= DASHBOARD["schemaVersion"] < 45


def test_datasource_variable_selects_prometheus_datasources() -> None:
    ds = variable("datasource")
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"


@pytest.mark.parametrize("name", ["model", "backend", "instance"])
def test_filter_variables_are_multi_value_with_all(name: str) -> None:
    var = variable(name)
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert var["multi"] is True
    assert var["includeAll"] is True
    assert var["allValue"] == ".*"  # keeps "All" one short regex instead of a long alternation
    assert var["refresh"] in (1, 2)  # on load / on time range change: new models show up


def test_variable_queries_read_their_own_label() -> None:
    labels = {q.where: q.label for q in QUERIES if q.kind == "variable"}
    assert labels == {
        "variable $model": "model",
        "variable $backend": "backend",
        "variable $instance": "instance",
    }


def test_every_variable_used_is_defined() -> None:
    defined = {v["name"] for v in DASHBOARD["templating"]["list"]} | BUILTIN_VARIABLES
    used: set[str] = set()
    for query in QUERIES:
        used |= variables_in(query.expr)
    for panel in iter_panels(DASHBOARD):
        used |= variables_in(str(panel.get("datasource", "")))
    assert used - defined == set()
    assert {"model", "backend", "instance", "datasource", "__rate_interval"} <= used


# --- datasource ---------------------------------------------------------------------------------


def test_every_panel_and_target_reads_the_datasource_variable() -> None:
    for panel in iter_panels(DASHBOARD):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, (panel["title"], target["refId"])


def test_every_annotation_query_reads_the_datasource_variable() -> None:
    for annotation in DASHBOARD["annotations"]["list"]:
        if annotation.get("builtIn"):
            continue
        assert annotation["datasource"] == DATASOURCE, annotation["name"]


# --- layout -------------------------------------------------------------------------------------


def test_panel_ids_are_unique() -> None:
    ids = [panel["id"] for panel in iter_panels(DASHBOARD)]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids))


def test_target_ref_ids_are_unique_within_a_panel() -> None:
    for panel in iter_panels(DASHBOARD):
        refs = [t["refId"] for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


def test_grid_positions_fit_and_do_not_overlap() -> None:
    boxes = []
    for panel in iter_panels(DASHBOARD):
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        boxes.append((panel["title"], g))
    for (title_a, a), (title_b, b) in itertools.combinations(boxes, 2):
        overlap = (
            a["x"] < b["x"] + b["w"]
            and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"]
            and b["y"] < a["y"] + a["h"]
        )
        assert not overlap, f"{title_a!r} overlaps {title_b!r}"


def test_rows_follow_the_guide_in_order() -> None:
    assert list(by_row(DASHBOARD)) == ROWS


# --- what each row shows ------------------------------------------------------------------------


def quantiles_of(exprs: list[str], metric: str) -> set[float]:
    pattern = re.compile(rf"histogram_quantile\(([0-9.]+), sum by \(le, model\) \(rate\({metric}_bucket\{{")
    return {float(q) for expr in exprs for q in pattern.findall(expr)}


def test_slo_row_shows_percentiles_rate_errors_queue_and_workers() -> None:
    exprs = exprs_of(by_row(DASHBOARD)["SLO overview"])
    for metric in ("slm_time_to_first_token_seconds", "slm_inter_token_latency_seconds",
                   "slm_e2e_request_latency_seconds"):  # fmt: skip
        assert quantiles_of(exprs, metric) == {0.5, 0.95, 0.99}, metric
    names = set().union(*map(names_in_expr, exprs))
    assert {"slm_requests_total", "slm_request_errors_total", "slm_queue_depth", "slm_workers_ready",
            "slm_worker_busy_slots", "slm_worker_slots"} <= names  # fmt: skip
    assert any("slm_request_errors_total" in e and "/" in e and "slm_requests_total" in e for e in exprs)


def test_latency_row_shows_p50_p90_p99_of_each_latency_and_a_ttft_heatmap() -> None:
    panels = by_row(DASHBOARD)["Latency"]
    exprs = exprs_of(panels)
    for metric in ("slm_time_to_first_token_seconds", "slm_inter_token_latency_seconds",
                   "slm_e2e_request_latency_seconds", "slm_request_queue_time_seconds",
                   "slm_prompt_eval_seconds", "slm_generation_seconds"):  # fmt: skip
        assert quantiles_of(exprs, metric) == {0.5, 0.9, 0.99}, metric
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert len(heatmaps) == 1
    (target,) = heatmaps[0]["targets"]
    assert target["format"] == "heatmap"
    assert names_in_expr(target["expr"]) == {"slm_time_to_first_token_seconds_bucket"}
    assert "sum by (le)" in target["expr"]


def test_load_row_shows_in_flight_queue_and_tokens_per_second() -> None:
    exprs = exprs_of(by_row(DASHBOARD)["Load"])
    names = set().union(*map(names_in_expr, exprs))
    assert {"slm_requests_in_flight", "slm_queue_depth", "slm_prompt_tokens_total",
            "slm_generation_tokens_total"} <= names  # fmt: skip
    for counter in ("slm_prompt_tokens_total", "slm_generation_tokens_total"):
        assert any(f"rate({counter}{{" in e for e in exprs), counter


def test_errors_row_shows_each_failure_kind() -> None:
    exprs = exprs_of(by_row(DASHBOARD)["Errors"])
    grouped = {name: labels for e in exprs for name, labels in labels_in_expr(e).items()}
    assert "error_type" in grouped["slm_request_errors_total"]
    assert "reason" in grouped["slm_finish_reasons_total"]
    assert "phase" in grouped["slm_redeliveries_total"]
    assert "slm_client_disconnects_total" in grouped
    assert "provider" in grouped["slm_upstream_errors_total"]


def test_routing_row_shows_fallbacks_router_decisions_and_shares() -> None:
    panels = by_row(DASHBOARD)["Routing"]
    exprs = exprs_of(panels)
    grouped: dict[str, set[str]] = {}
    for e in exprs:
        for name, labels in labels_in_expr(e).items():
            grouped.setdefault(name, set()).update(labels)
    assert {"model", "to", "reason"} <= grouped["slm_fallbacks_total"]
    assert {"router", "model", "reason"} <= grouped["slm_router_decisions_total"]
    for counter in ("slm_fallbacks_total", "slm_router_decisions_total"):
        assert any(f"rate({counter}{{" in e for e in exprs), counter
    shares = [p for p in panels if p["fieldConfig"]["defaults"]["unit"] == "percentunit"]
    assert len(shares) == 1
    (share,) = shares[0]["targets"]
    numerator, denominator = share["expr"].split(" / on (router) group_left ")
    assert numerator.startswith("sum by (router, model) (rate(slm_router_decisions_total{")
    assert denominator == ROUTER_TOTAL
    for panel in panels:
        assert panel["description"], panel["title"]
        assert "$" not in panel["description"], panel["title"]  # Grafana would fill in the variable
        assert panel["fieldConfig"]["defaults"]["unit"] in ("reqps", "percentunit"), panel["title"]


def test_residency_row_shows_loaded_memory_evictions_and_kv_usage() -> None:
    panels = by_row(DASHBOARD)["Residency"]
    exprs = exprs_of(panels)
    names = set().union(*map(names_in_expr, exprs))
    assert {"slm_model_loaded", "slm_model_memory_bytes", "slm_model_evictions_total",
            "slm_worker_kv_cache_usage_ratio", "slm_worker_resident_memory_bytes"} <= names
    memory = next(e for e in exprs if "slm_model_memory_bytes" in e)
    assert "kind" in labels_in_expr(memory)["slm_model_memory_bytes"] or "by (model, kind)" in memory
    assert any("increase(slm_model_evictions_total{" in e and "reason" in e for e in exprs)
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in panels}
    assert units["KV cache usage"] == "percentunit"
    assert units["Model memory: estimated and measured"] == units["Worker memory (RSS)"] == "bytes"
    for panel in panels:
        assert panel["description"] and "$" not in panel["description"], panel["title"]


def test_model_swaps_are_annotated() -> None:
    annotated = set().union(*(names_in_expr(q.expr) for q in QUERIES if q.kind == "annotation"))
    assert {"slm_model_info", "slm_registry_reloads_total"} <= annotated
    swap_panels = exprs_of(by_row(DASHBOARD)["Model swaps"])
    assert {"slm_model_info", "slm_registry_reloads_total"} <= set().union(*map(names_in_expr, swap_panels))


# --- PromQL -------------------------------------------------------------------------------------


def test_every_query_parses_with_promtool() -> None:
    exprs = [substitute(q.expr, LIVE_VALUES) for q in QUERIES]
    assert len(exprs) > 40
    errors = promtool.check_expressions(exprs)
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_query_names_only_exported_metrics(query: Query) -> None:
    names = names_in_expr(query.expr)
    assert names, "no metric selected"
    unknown = {name for name in names if series_labels(name) is None}
    assert unknown == set(), f"not exported by slm-server: {sorted(unknown)}"


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.where)
def test_query_uses_only_labels_its_metrics_carry(query: Query) -> None:
    used = labels_in_expr(query.expr)
    if query.label is not None:
        for labels in used.values():
            labels.add(query.label)
    for name, labels in used.items():
        carried = series_labels(name)
        assert carried is not None, name
        assert labels <= carried, f"{name} has no label {sorted(labels - carried)}"


def test_percentiles_follow_the_house_rule() -> None:
    rule = re.compile(
        r"^histogram_quantile\(0\.\d+, sum by \(le, model\) "
        r"\(rate\((\w+)_bucket\{[^}]*\}\[\$__rate_interval\]\)\)\)$"
    )
    percentiles = [q.expr for q in QUERIES if "histogram_quantile" in q.expr]
    assert len(percentiles) > 20
    for expr in percentiles:
        assert rule.match(expr), expr


def test_every_range_uses_rate_interval() -> None:
    for query in QUERIES:
        for window in re.findall(r"\[([^\]]*)\]", query.expr):
            assert window == "$__rate_interval", query.where


def test_selectors_filter_by_the_dashboard_variables() -> None:
    """Gateway series honour $model, $backend (where they have it) and $instance; worker series
    honour $model only ($instance lists gateways, and a worker is another target)."""
    for query in QUERIES:
        if query.kind == "variable":
            continue
        expr = query.expr.replace(f" / on (router) group_left {ROUTER_TOTAL}", "")
        for selector in iter_selectors(expr):
            assert selector.name is not None
            base = re.sub(r"_(bucket|sum|count)$", "", selector.name)
            labels = EXPORTED_METRICS[base]
            expected: dict[str, tuple[str, str]] = {
                label: ("=~", f"${label}") for label in ("model", "backend") if label in labels
            }
            if base not in WORKER_METRICS:
                expected["instance"] = ("=~", "$instance")
            actual = {k: v for k, v in selector.matchers.items() if k in ("model", "backend", "instance")}
            assert actual == expected, f"{query.where}: {selector.name}"


# --- the generator ------------------------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_dashboard", GENERATOR_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_what_the_generator_writes() -> None:
    rendered = load_generator().render()
    assert DASHBOARD_PATH.read_text(encoding="utf-8") == rendered, (
        "grafana/dashboards/slm-server.json is stale: run `python grafana/generate_dashboard.py`"
    )
