"""The metrics slm-server exports, as the dashboard and the alert rules may use them.

`EXPORTED_METRICS` maps each exported name (counters with their `_total`, histograms by their base
name) to its label names. `series_labels()` resolves a series name as PromQL sees it
(`X_bucket`, `X_sum`, `X_count` of a histogram) to the labels it carries, including the ones
Prometheus adds at scrape time. `parse_exposition()` builds the same kind of map from a live
/metrics text, so the static list can be checked against (or replaced by) a running server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

GATEWAY_METRICS: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        "slm_requests_total": ("model", "backend", "endpoint", "stream", "code"),
        "slm_request_errors_total": ("model", "backend", "error_type"),
        "slm_time_to_first_token_seconds": ("model", "backend"),
        "slm_inter_token_latency_seconds": ("model", "backend"),
        "slm_e2e_request_latency_seconds": ("model", "backend"),
        "slm_request_queue_time_seconds": ("model", "backend"),
        "slm_prompt_eval_seconds": ("model", "backend"),
        "slm_generation_seconds": ("model", "backend"),
        "slm_prompt_tokens_total": ("model", "backend"),
        "slm_generation_tokens_total": ("model", "backend"),
        "slm_finish_reasons_total": ("model", "backend", "reason"),
        "slm_requests_in_flight": ("model", "backend"),
        "slm_queue_depth": ("model",),
        "slm_queue_waiting": ("model", "priority"),
        "slm_queue_wait_seconds": ("model", "priority"),
        "slm_workers_ready": ("model",),
        "slm_client_disconnects_total": ("model", "backend"),
        "slm_redeliveries_total": ("model", "phase"),
        "slm_registry_reloads_total": ("result",),
        "slm_model_info": ("model", "backend", "file", "quant", "n_ctx"),
        "slm_upstream_latency_seconds": ("model", "provider"),
        "slm_upstream_errors_total": ("model", "provider", "code"),
        "slm_fallbacks_total": ("model", "to", "reason"),
        "slm_router_decisions_total": ("router", "model", "reason"),
        "slm_model_loaded": ("model",),
        "slm_model_memory_bytes": ("model", "kind"),
        "slm_model_evictions_total": ("model", "reason"),
    }.items()
}

WORKER_METRICS: dict[str, frozenset[str]] = {
    "slm_worker_busy_slots": frozenset({"model"}),
    "slm_worker_slots": frozenset({"model"}),
    "slm_model_load_seconds": frozenset({"model"}),
    "slm_worker_kv_cache_usage_ratio": frozenset({"model"}),
    "slm_worker_resident_memory_bytes": frozenset({"model"}),
}

EXPORTED_METRICS: dict[str, frozenset[str]] = {**GATEWAY_METRICS, **WORKER_METRICS}

HISTOGRAMS: frozenset[str] = frozenset(
    {
        "slm_time_to_first_token_seconds",
        "slm_inter_token_latency_seconds",
        "slm_e2e_request_latency_seconds",
        "slm_request_queue_time_seconds",
        "slm_queue_wait_seconds",
        "slm_prompt_eval_seconds",
        "slm_generation_seconds",
        "slm_upstream_latency_seconds",
        "slm_model_load_seconds",
    }
)

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS: frozenset[str] = frozenset({"instance", "job"})

# Series Prometheus itself writes for each scrape target (usable in alert rules).
SYNTHETIC_METRICS: dict[str, frozenset[str]] = {"up": frozenset()}

_HISTOGRAM_SUFFIXES = {"_bucket": frozenset({"le"}), "_sum": frozenset(), "_count": frozenset()}


def series_labels(
    series: str,
    metrics: Mapping[str, frozenset[str]] = EXPORTED_METRICS,
    histograms: Iterable[str] = HISTOGRAMS,
) -> frozenset[str] | None:
    """The labels a series carries once scraped, or None if nothing exports it."""
    extra = TARGET_LABELS | {"__name__"}
    histograms = frozenset(histograms)
    if series in metrics and series not in histograms:
        return metrics[series] | extra
    if series in SYNTHETIC_METRICS:
        return SYNTHETIC_METRICS[series] | extra
    for suffix, suffix_labels in _HISTOGRAM_SUFFIXES.items():
        base = series.removesuffix(suffix)
        if base != series and base in histograms and base in metrics:
            return metrics[base] | suffix_labels | extra
    return None


_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+")
_LABEL_NAME = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')


def parse_exposition(text: str) -> tuple[dict[str, frozenset[str]], frozenset[str]]:
    """Metrics and their labels from Prometheus text exposition, in `EXPORTED_METRICS`' shape.

    Returns (metrics, histograms). Counters are keyed with `_total`, histograms by base name; a
    metric that has been declared but has no sample yet maps to an empty label set. `_created`
    series (prometheus_client's creation timestamps) are folded into their metric.
    """
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if match := _TYPE_LINE.match(line):
            family, kind = match.groups()
            types[family] = kind
            key = family + "_total" if kind == "counter" and not family.endswith("_total") else family
            labels.setdefault(key, set())
            continue
        if line.startswith("#") or not line.strip():
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_text = match.groups()
        names = set(_LABEL_NAME.findall(label_text or ""))
        key = _family_key(name, types)
        if name.endswith("_bucket") and types.get(key) == "histogram":
            names.discard("le")
        labels.setdefault(key, set()).update(names)
    histograms = frozenset(name for name, kind in types.items() if kind == "histogram")
    return {name: frozenset(found) for name, found in labels.items()}, histograms


def _family_key(name: str, types: Mapping[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    if name.endswith("_created"):
        base = name.removesuffix("_created")
        if types.get(base) == "counter" or types.get(base.removesuffix("_total")) == "counter":
            return base if base.endswith("_total") else base + "_total"
    return name
