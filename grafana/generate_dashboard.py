"""Write grafana/dashboards/slm-server.json, the slm-server Grafana dashboard.

The JSON is generated so that every query follows the same rules and stays reviewable:

- percentiles are always
  `histogram_quantile(q, sum by (le, model) (rate(X_bucket{...}[$__rate_interval])))`;
- gateway series are filtered by `$model`, `$backend` (where the metric has that label) and
  `$instance`; worker series (`slm_worker_*`, `slm_model_load_seconds`) only by `$model`, because
  `$instance` lists gateways and a worker is another scrape target;
- every panel, target and annotation reads from the `${datasource}` variable;
- the one exception to the filters: a router's share of requests per target divides by all of the
  router's requests (`ROUTER_TOTAL`, filtered by `$instance` only), so the shares add up to 1
  whatever `$model` selects.

Edit this file, then run `python grafana/generate_dashboard.py`; tests/grafana checks that the
committed JSON is exactly what this script writes (and that every query parses and names only
exported metrics and labels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).parent / "dashboards" / "slm-server.json"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# Gateway series carrying model and backend; gateway series carrying model only; worker series.
GW = 'model=~"$model",backend=~"$backend",instance=~"$instance"'
GW_MODEL = 'model=~"$model",instance=~"$instance"'
WORKER = 'model=~"$model"'

TTFT_OBJECTIVE_S = 2.0  # the same objective as SLMTimeToFirstTokenP99High in alerts/

Panel = dict[str, Any]


def quantile(q: float, metric: str, selector: str = GW) -> str:
    return f"histogram_quantile({q}, sum by (le, model) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def rate_sum(metric: str, selector: str, by: str = "model") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RATE}]))"


def target(expr: str, legend: str, ref: str, *, fmt: str = "time_series", instant: bool = False) -> Panel:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref,
    }


def targets(*pairs: tuple[str, str]) -> list[Panel]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def quantile_targets(metric: str, qs: tuple[float, ...], selector: str = GW) -> list[Panel]:
    return targets(*((quantile(q, metric, selector), f"{{{{model}}}} p{round(q * 100)}") for q in qs))


def thresholds(*steps: tuple[str, float | None]) -> Panel:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


GREEN: tuple[str, None] = ("green", None)


def stat(title: str, description: str, tgts: list[Panel], unit: str, steps: Panel | None = None) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": tgts,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "decimals": 3 if unit == "s" else 2,
                "color": {"mode": "thresholds"},
                "thresholds": steps or thresholds(GREEN),
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name",
            "wideLayout": True,
        },
    }


def timeseries(title: str, description: str, tgts: list[Panel], unit: str, *, stack: bool = False) -> Panel:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": tgts,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 20 if stack else 5,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def latency(title: str, description: str, metric: str, selector: str = GW) -> Panel:
    return timeseries(title, description, quantile_targets(metric, (0.5, 0.9, 0.99), selector), "s")


def ttft_heatmap() -> Panel:
    expr = f"sum by (le) (increase(slm_time_to_first_token_seconds_bucket{{{GW}}}[{RATE}]))"
    return {
        "type": "heatmap",
        "title": "Time to first token: distribution",
        "description": "Requests per TTFT bucket (all selected models), from the gateway's histogram.",
        "datasource": DATASOURCE,
        "targets": [target(expr, "{{le}}", "A", fmt="heatmap")],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64, "reverse": False},
            "yAxis": {"unit": "s", "axisPlacement": "left"},
            "rowsFrame": {"layout": "auto"},
            "filterValues": {"le": 1e-9},
            "tooltip": {"mode": "single", "yHistogram": True},
            "legend": {"show": True},
        },
    }


def loaded_models_table() -> Panel:
    expr = f"max by (model, backend, file, quant, n_ctx) (slm_model_info{{{GW}}})"
    return {
        "type": "table",
        "title": "Loaded models",
        "description": "slm_model_info: one row per model and the file, quantisation and context it serves.",
        "datasource": DATASOURCE,
        "targets": [target(expr, "", "A", fmt="table", instant=True)],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}},
        ],
    }


def model_load_time() -> Panel:
    expr = (
        f"max by (model) (slm_model_load_seconds_sum{{{WORKER}}} / slm_model_load_seconds_count{{{WORKER}}})"
    )
    return {
        "type": "bargauge",
        "title": "Model load time (mean per worker, slowest)",
        "description": "Seconds a worker took to load the GGUF, averaged over its loads; the slowest worker.",
        "datasource": DATASOURCE,
        "targets": [target(expr, "{{model}}", "A", instant=True)],
        "fieldConfig": {"defaults": {"unit": "s", "min": 0}, "overrides": []},
        "options": {
            "orientation": "horizontal",
            "displayMode": "basic",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def slo_row() -> list[Panel]:
    server_errors = GW + ',error_type!~"validation|cancelled"'
    error_ratio = (
        f"{rate_sum('slm_request_errors_total', server_errors)} / {rate_sum('slm_requests_total', GW)}"
    )
    return [
        stat(
            "TTFT p50 / p95 / p99",
            "Time to first token, from arrival at the gateway.",
            quantile_targets("slm_time_to_first_token_seconds", (0.5, 0.95, 0.99)),
            "s",
            thresholds(GREEN, ("orange", TTFT_OBJECTIVE_S / 2), ("red", TTFT_OBJECTIVE_S)),
        ),
        stat(
            "Inter-token latency p50 / p95 / p99",
            "Time between two streamed tokens.",
            quantile_targets("slm_inter_token_latency_seconds", (0.5, 0.95, 0.99)),
            "s",
            thresholds(GREEN, ("orange", 0.1), ("red", 0.25)),
        ),
        stat(
            "End-to-end latency p50 / p95 / p99",
            "Arrival at the gateway to the last byte of the response.",
            quantile_targets("slm_e2e_request_latency_seconds", (0.5, 0.95, 0.99)),
            "s",
        ),
        stat(
            "Requests / s",
            "All requests, every status.",
            targets((rate_sum("slm_requests_total", GW), "{{model}}")),
            "reqps",
        ),
        stat(
            "Server error ratio",
            "Errors per request, leaving out client errors (validation, cancelled).",
            targets((error_ratio, "{{model}}")),
            "percentunit",
            thresholds(GREEN, ("orange", 0.01), ("red", 0.05)),
        ),
        stat(
            "In flight",
            "Requests admitted and not yet answered.",
            targets((f"sum by (model) (slm_requests_in_flight{{{GW}}})", "{{model}}")),
            "short",
        ),
        stat(
            "Queue depth",
            "Requests waiting in the model's Redis stream.",
            targets((f"max by (model) (slm_queue_depth{{{GW_MODEL}}})", "{{model}}")),
            "short",
            thresholds(GREEN, ("orange", 4), ("red", 16)),
        ),
        stat(
            "Workers ready",
            "Live workers per model, as the gateway sees their heartbeats.",
            targets((f"max by (model) (slm_workers_ready{{{GW_MODEL}}})", "{{model}}")),
            "short",
            thresholds(("red", None), ("green", 1)),
        ),
        stat(
            "Busy slots",
            "Busy worker slots over all slots, summed over the workers of a model.",
            targets(
                (
                    f"sum by (model) (slm_worker_busy_slots{{{WORKER}}})"
                    f" / sum by (model) (slm_worker_slots{{{WORKER}}})",
                    "{{model}}",
                )
            ),
            "percentunit",
            thresholds(GREEN, ("orange", 0.8), ("red", 0.95)),
        ),
    ]


def latency_row() -> list[Panel]:
    return [
        latency("Time to first token", "From arrival at the gateway.", "slm_time_to_first_token_seconds"),
        latency("Inter-token latency", "Between streamed tokens.", "slm_inter_token_latency_seconds"),
        latency("End-to-end latency", "Whole request.", "slm_e2e_request_latency_seconds"),
        latency(
            "Queue time",
            "Enqueued to picked up by a worker, both on the gateway clock.",
            "slm_request_queue_time_seconds",
        ),
        latency("Prompt evaluation", "Worker time spent on the prompt (prefill).", "slm_prompt_eval_seconds"),
        latency("Generation", "Worker time spent generating tokens (decode).", "slm_generation_seconds"),
        ttft_heatmap(),
        latency(
            "Hosted model latency (upstream)",
            "Time spent in the hosted provider's API, per hosted model.",
            "slm_upstream_latency_seconds",
            GW_MODEL,
        ),
    ]


def load_row() -> list[Panel]:
    def per_second(tokens: str, seconds: str) -> str:
        return f"{rate_sum(tokens, GW)} / {rate_sum(seconds + '_sum', GW)}"

    return [
        timeseries(
            "Requests in flight",
            "Admitted, not yet answered.",
            targets((f"sum by (model) (slm_requests_in_flight{{{GW}}})", "{{model}}")),
            "short",
            stack=True,
        ),
        timeseries(
            "Queue depth",
            "Requests waiting in the model's Redis stream (what an autoscaler reads).",
            targets((f"max by (model) (slm_queue_depth{{{GW_MODEL}}})", "{{model}}")),
            "short",
        ),
        timeseries(
            "Requests / s by endpoint and status",
            "",
            targets(
                (
                    rate_sum("slm_requests_total", GW, "model, endpoint, code"),
                    "{{model}} {{endpoint}} {{code}}",
                )
            ),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Tokens / s in and out",
            "Prompt tokens read and tokens generated, per second, all requests together.",
            targets(
                (rate_sum("slm_prompt_tokens_total", GW), "{{model}} prompt (in)"),
                (rate_sum("slm_generation_tokens_total", GW), "{{model}} generated (out)"),
            ),
            "suffix: tok/s",
        ),
        timeseries(
            "Decode speed per request",
            "Generated tokens per second of generation time.",
            targets((per_second("slm_generation_tokens_total", "slm_generation_seconds"), "{{model}}")),
            "suffix: tok/s",
        ),
        timeseries(
            "Prompt evaluation speed per request",
            "Prompt tokens per second of prompt-evaluation time.",
            targets((per_second("slm_prompt_tokens_total", "slm_prompt_eval_seconds"), "{{model}}")),
            "suffix: tok/s",
        ),
        timeseries(
            "Workers and slots",
            "Workers seen by heartbeat (gateway view); slots and busy slots (workers' view).",
            targets(
                (f"max by (model) (slm_workers_ready{{{GW_MODEL}}})", "{{model}} workers ready"),
                (f"sum by (model) (slm_worker_slots{{{WORKER}}})", "{{model}} slots"),
                (f"sum by (model) (slm_worker_busy_slots{{{WORKER}}})", "{{model}} busy slots"),
            ),
            "short",
        ),
        timeseries(
            "Slot utilisation",
            "Busy slots over all slots.",
            targets(
                (
                    f"sum by (model) (slm_worker_busy_slots{{{WORKER}}})"
                    f" / sum by (model) (slm_worker_slots{{{WORKER}}})",
                    "{{model}}",
                )
            ),
            "percentunit",
        ),
    ]


def errors_row() -> list[Panel]:
    return [
        timeseries(
            "Errors / s by type",
            "overloaded, validation, timeout, worker_lost, upstream, cancelled, unavailable, internal.",
            targets(
                (rate_sum("slm_request_errors_total", GW, "model, error_type"), "{{model}} {{error_type}}")
            ),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Non-2xx responses / s by status",
            "",
            targets(
                (rate_sum("slm_requests_total", GW + ',code!~"2.."', "model, code"), "{{model}} {{code}}")
            ),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Finish reasons / s",
            "Why generations ended: stop, length, ...",
            targets((rate_sum("slm_finish_reasons_total", GW, "model, reason"), "{{model}} {{reason}}")),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Redeliveries",
            "Requests handed to another worker after theirs was lost, by phase.",
            targets(
                (
                    f"sum by (model, phase) (increase(slm_redeliveries_total{{{GW_MODEL}}}[{RATE}]))",
                    "{{model}} {{phase}}",
                )
            ),
            "short",
        ),
        timeseries(
            "Client disconnects / s",
            "Clients that went away before the answer was complete.",
            targets((rate_sum("slm_client_disconnects_total", GW), "{{model}}")),
            "reqps",
        ),
        timeseries(
            "Upstream errors / s by provider",
            "Failed calls to hosted providers, by provider and status code.",
            targets(
                (rate_sum("slm_upstream_errors_total", GW_MODEL, "provider, code"), "{{provider}} {{code}}")
            ),
            "reqps",
            stack=True,
        ),
    ]


# A router's requests over all its targets, whatever $model selects, so that shares add up to 1.
ROUTER_TOTAL = f'sum by (router) (rate(slm_router_decisions_total{{instance=~"$instance"}}[{RATE}]))'


def routing_row() -> list[Panel]:
    return [
        timeseries(
            "Fallbacks / s by model → to and reason",
            "Requests passed from a model that could not serve them (before the first byte) to the next "
            "candidate of their plan: its fallback, or a router's next target. reason: the error's type "
            "(unavailable, overloaded, rate_limited, timeout, upstream, worker_lost, internal, validation). "
            "The Model filter picks the model that passed the request on.",
            targets(
                (rate_sum("slm_fallbacks_total", GW_MODEL, "model, to, reason"), "{{model}} → {{to}} {{reason}}")
            ),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Router decisions / s by router → model and reason",
            "Where each router sent its requests, and why: escalated (a rule matched), objective (the first "
            "target predicted to meet the TTFT objective), last_target (none was). The Model filter picks the target.",
            targets(
                (
                    rate_sum("slm_router_decisions_total", GW_MODEL, "router, model, reason"),
                    "{{router}} → {{model}} {{reason}}",
                )
            ),
            "reqps",
            stack=True,
        ),
        timeseries(
            "Share of each router's requests by target",
            "Requests a router sent to each target over all the router's requests (every target, whatever the "
            "Model filter picks), for any reason. No value while a router has no traffic.",
            targets(
                (
                    f"{rate_sum('slm_router_decisions_total', GW_MODEL, 'router, model')}"
                    f" / on (router) group_left {ROUTER_TOTAL}",
                    "{{router}} → {{model}}",
                )
            ),
            "percentunit",
        ),
    ]


def swaps_row() -> list[Panel]:
    return [
        loaded_models_table(),
        timeseries(
            "Registry reloads",
            "Hot reloads of model_registry.yaml, by result.",
            targets(
                (
                    "sum by (result) "
                    f'(increase(slm_registry_reloads_total{{instance=~"$instance"}}[{RATE}]))',
                    "{{result}}",
                )
            ),
            "short",
        ),
        model_load_time(),
        timeseries(
            "Served model variants",
            "One line per (model, file, quant): a swap shows as one line ending and another starting.",
            targets(
                (f"count by (model, file, quant) (slm_model_info{{{GW}}})", "{{model}} {{file}} {{quant}}")
            ),
            "short",
        ),
    ]


def residency_row() -> list[Panel]:
    """What `serve` keeps loaded under its memory budget (server/residency), and the workers' memory."""
    return [
        timeseries(
            "Models loaded",
            "1 while a local model has a ready worker, 0 while it is unloaded, loading or draining "
            "(load on demand, idle unload, eviction under the memory budget).",
            targets((f"max by (model) (slm_model_loaded{{{GW_MODEL}}})", "{{model}}")),
            "short",
        ),
        timeseries(
            "Model memory: estimated and measured",
            "estimated: from the GGUF before loading (weights, KV cache, compute buffers, runtime); "
            "measured: the RSS its workers report with their heartbeat.",
            targets((f"max by (model, kind) (slm_model_memory_bytes{{{GW_MODEL}}})", "{{model}} {{kind}}")),
            "bytes",
        ),
        timeseries(
            "Evictions",
            "Models unloaded to make room under the memory budget (budget) or after idle_unload_s (idle).",
            targets(
                (
                    f"sum by (model, reason) (increase(slm_model_evictions_total{{{GW_MODEL}}}[{RATE}]))",
                    "{{model}} {{reason}}",
                )
            ),
            "short",
        ),
        timeseries(
            "KV cache usage",
            "Share of each model's KV cache cells holding tokens (kept prefixes included), the fullest worker.",
            targets((f"max by (model) (slm_worker_kv_cache_usage_ratio{{{WORKER}}})", "{{model}}")),
            "percentunit",
        ),
        timeseries(
            "Worker memory (RSS)",
            "Resident memory of each model's workers, summed (the workers' own /metrics).",
            targets((f"sum by (model) (slm_worker_resident_memory_bytes{{{WORKER}}})", "{{model}}")),
            "bytes",
        ),
    ]


# (title, panels, (width, height) of each panel)
ROWS: list[tuple[str, list[Panel], list[tuple[int, int]]]] = [
    ("SLO overview", slo_row(), [(8, 5)] * 3 + [(4, 4)] * 6),
    ("Latency", latency_row(), [(8, 8)] * 6 + [(12, 8)] * 2),
    ("Load", load_row(), [(8, 8)] * 6 + [(12, 8)] * 2),
    ("Errors", errors_row(), [(12, 8)] * 2 + [(8, 8)] * 3 + [(24, 8)]),
    ("Routing", routing_row(), [(8, 8)] * 3),
    ("Residency", residency_row(), [(8, 8)] * 3 + [(12, 8)] * 2),
    ("Model swaps", swaps_row(), [(12, 8), (6, 8), (6, 8), (24, 8)]),
]


def layout() -> list[Panel]:
    """Rows and panels with ids and gridPos, left to right, wrapping at 24 columns."""
    panels: list[Panel] = []
    y = 0
    for title, row_panels, sizes in ROWS:
        assert len(row_panels) == len(sizes), title
        panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel, (w, h) in zip(row_panels, sizes, strict=True):
            if x + w > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append({**panel, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            x += w
            line_height = max(line_height, h)
        y += line_height
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return panels


def query_variable(name: str, label: str, query: str) -> Panel:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
    }


def templating() -> list[Panel]:
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
            "options": [],
            "refresh": 1,
            "regex": "",
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "skipUrlSync": False,
        },
        # slm_model_info lists every registered model from start-up on, before its first request.
        query_variable("model", "Model", "label_values(slm_model_info, model)"),
        query_variable("backend", "Backend", 'label_values(slm_model_info{model=~"$model"}, backend)'),
        query_variable("instance", "Gateway instance", "label_values(slm_model_info, instance)"),
    ]


def annotation_list() -> list[Panel]:
    def prometheus(name: str, color: str, expr: str, title: str, text: str, tags: str) -> Panel:
        return {
            "name": name,
            "datasource": DATASOURCE,
            "enable": True,
            "hide": False,
            "iconColor": color,
            "expr": expr,
            "step": "30s",
            "titleFormat": title,
            "textFormat": text,
            "tagKeys": tags,
            "useValueForTime": False,
        }

    return [
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        },
        prometheus(
            "Model swap",
            "orange",
            # A (model, file, quant, n_ctx) series that was not there one window ago: a model was
            # loaded, swapped for another file or quantisation, or its gateway restarted.
            f"slm_model_info{{{GW}}} unless slm_model_info{{{GW}}} offset {RATE}",
            "Model loaded: {{model}}",
            "{{file}} {{quant}} n_ctx={{n_ctx}} on {{instance}}",
            "model,backend",
        ),
        prometheus(
            "Registry reload",
            "purple",
            f'sum by (result) (increase(slm_registry_reloads_total{{instance=~"$instance"}}[{RATE}])) > 0',
            "Registry reload: {{result}}",
            "model_registry.yaml was reloaded",
            "result",
        ),
        prometheus(
            "Worker model load",
            "blue",
            f"sum by (model) (increase(slm_model_load_seconds_count{{{WORKER}}}[{RATE}])) > 0",
            "Worker loaded {{model}}",
            "a worker (re)loaded the model",
            "model",
        ),
    ]


def dashboard() -> Panel:
    return {
        "id": None,
        "uid": "slm-server",
        "title": "slm-server",
        "description": "Latency, load, errors, routing, residency and model swaps of slm-server (gateway and workers).",
        "tags": ["slm-server", "llm", "inference"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": annotation_list()},
        "templating": {"list": templating()},
        "panels": layout(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUTPUT.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
