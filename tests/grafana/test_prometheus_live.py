"""A real Prometheus scrapes a running slm-server; every dashboard query must return data.

Needs, from a conftest:
- `live_server_url` (module or session scope): base URL of a running gateway, e.g.
  http://127.0.0.1:8000, with at least one local and one hosted model, a model that falls back
  whenever it is asked and a router (tests/grafana/conftest.py has one);
- optionally `live_worker_metrics_urls` (same scope): base URLs of the workers' /metrics
  servers (job `slm-worker`); without it only the gateway is scraped.

The module fixture starts Prometheus (tests/grafana/prometheus_fixture.py) with the alert rules
loaded, waits for the targets to be up, then sends traffic twice (tests/grafana/traffic.py):
the first round creates the labelled series, the second moves them inside the rate window, so
rate() and histogram_quantile() see two different samples. Dashboard variables are replaced by
`.*` (all models, backends, instances) and `$__rate_interval` by 1m.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .dashboard import ALERT_RULES_PATH, LIVE_VALUES, Query, alert_rules, load_dashboard, queries
from .exported_metrics import EXPORTED_METRICS, HISTOGRAMS, SYNTHETIC_METRICS, parse_exposition, series_labels
from .prometheus_fixture import PrometheusError, PrometheusServer, run_prometheus
from .promql import labels_in_expr, names_in_expr, substitute
from .traffic import TrafficReport, send_traffic

pytestmark = pytest.mark.integration

QUERIES = queries(load_dashboard())
DATA_QUERIES = [q for q in QUERIES if q.kind != "annotation"]
ANNOTATION_QUERIES = [q for q in QUERIES if q.kind == "annotation"]
QUERY_TIMEOUT_S = 10.0


@dataclass
class Scraped:
    prometheus: PrometheusServer
    metrics_urls: list[str]
    traffic: list[TrafficReport]


def optional_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        return None


@pytest.fixture(scope="module")
def scraped(request: pytest.FixtureRequest, live_server_url: str) -> Iterator[Scraped]:
    workers = list(optional_fixture(request, "live_worker_metrics_urls") or [])
    jobs = {"slm-gateway": [live_server_url]}
    if workers:
        jobs["slm-worker"] = workers
    with run_prometheus(jobs, rule_files=[ALERT_RULES_PATH]) as prometheus:
        prometheus.wait_for_targets_up(timeout=30)
        reports: list[TrafficReport] = []
        for _ in range(2):
            reports.append(send_traffic(live_server_url))
            succeeded = sum(r.succeeded for r in reports)

            def counted(n: int = succeeded) -> bool | None:
                return True if prometheus.value("sum(slm_requests_total)") >= n else None

            prometheus.wait_until(f"Prometheus to count {succeeded} successful requests", counted, timeout=30)
            prometheus.wait_for_scrape_after(time.time())
        urls = [url.rstrip("/") + "/metrics" for url in [live_server_url, *workers]]
        yield Scraped(prometheus, urls, reports)


def evaluate(prometheus: PrometheusServer, query: Query, *, need_finite: bool) -> list[dict[str, Any]]:
    expr = substitute(query.expr, LIVE_VALUES)

    def probe() -> list[dict[str, Any]] | None:
        result = prometheus.query(expr)
        if not result:
            return None
        if need_finite and not any(math.isfinite(float(s["value"][1])) for s in result):
            return None
        return result

    try:
        return prometheus.wait_until(f"data for {expr}", probe, QUERY_TIMEOUT_S)
    except PrometheusError as exc:
        last = prometheus.query(expr)
        pytest.fail(f"{query.where}: {expr}\nlast result: {last}\n{exc}", pytrace=False)


def test_targets_are_up_and_traffic_was_served(scraped: Scraped) -> None:
    targets = scraped.prometheus.targets()
    assert {t["labels"]["job"] for t in targets} >= {"slm-gateway"}
    assert all(t["health"] == "up" for t in targets), targets
    for report in scraped.traffic:
        # every model answers its three requests, but `dead-hosted`, whose upstream is down on purpose
        serving = [m for m in report.models if m != "dead-hosted"]
        assert report.succeeded >= 3 * len(serving), report.statuses
        assert any(400 <= status < 500 for status in report.statuses), report.statuses


def test_routing_traffic_was_counted(scraped: Scraped) -> None:
    """The Routing row shows real hops, not only the series declared at zero."""
    for counter in ("slm_fallbacks_total", "slm_router_decisions_total"):
        assert scraped.prometheus.value(f"sum({counter})") > 0, counter


def test_alert_rules_load_and_evaluate_without_error(scraped: Scraped) -> None:
    expected = {rule["alert"] for rule in alert_rules()}

    def probe() -> list[dict[str, Any]] | None:
        rules = scraped.prometheus.rules()
        evaluated = [r for r in rules if not r.get("lastEvaluation", "").startswith("0001-")]
        return rules if len(evaluated) == len(rules) == len(expected) else None

    rules = scraped.prometheus.wait_until("every alert rule evaluated", probe, timeout=15)
    assert {rule["name"] for rule in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


@pytest.mark.parametrize("query", DATA_QUERIES, ids=lambda q: q.where)
def test_dashboard_query_returns_data(scraped: Scraped, query: Query) -> None:
    # A percentile must also be a number: NaN would mean the histogram counted nothing in the window.
    result = evaluate(scraped.prometheus, query, need_finite="histogram_quantile" in query.expr)
    assert result


@pytest.mark.parametrize("query", ANNOTATION_QUERIES, ids=lambda q: q.where)
def test_annotation_query_evaluates_on_series_that_exist(scraped: Scraped, query: Query) -> None:
    """An annotation is an event filter: empty until a swap or a reload happens. What must hold is
    that it evaluates, and that the series it watches exist."""
    scraped.prometheus.query(substitute(query.expr, LIVE_VALUES))  # raises on a PromQL error
    for name in sorted(names_in_expr(query.expr)):
        watched = Query(query.kind, f"{query.where}: {name}", f"count({name})")
        assert evaluate(scraped.prometheus, watched, need_finite=False)


def live_metrics(urls: list[str]) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    metrics: dict[str, frozenset[str]] = {}
    histograms: frozenset[str] = frozenset()
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as response:
            found, found_histograms = parse_exposition(response.read().decode())
        for name, labels in found.items():
            metrics[name] = metrics.get(name, frozenset()) | labels
        histograms |= found_histograms
    return metrics, histograms


def test_dashboard_and_alerts_use_only_what_live_metrics_export(scraped: Scraped) -> None:
    metrics, histograms = live_metrics(scraped.metrics_urls)
    exprs = [q.expr for q in QUERIES] + [rule["expr"] for rule in alert_rules()]
    problems: list[str] = []
    for expr in exprs:
        for name, used in labels_in_expr(expr).items():
            if name in SYNTHETIC_METRICS:
                continue
            carried = series_labels(name, metrics, histograms)
            if carried is None:
                problems.append(f"{name} is not in the live /metrics")
            elif not metrics.get(name if name in metrics else re.sub(r"_(bucket|sum|count)$", "", name)):
                problems.append(f"{name} is declared in the live /metrics but has no series yet")
            elif not used <= carried:
                problems.append(f"{name} carries no {sorted(used - carried)} in the live /metrics")
    assert sorted(set(problems)) == []


def test_contract_list_matches_live_metrics(scraped: Scraped) -> None:
    """tests/grafana/exported_metrics.py is what the static tests trust: it must be the truth."""
    metrics, histograms = live_metrics(scraped.metrics_urls)
    assert {name: metrics.get(name) for name in EXPORTED_METRICS} == EXPORTED_METRICS
    assert histograms >= HISTOGRAMS
