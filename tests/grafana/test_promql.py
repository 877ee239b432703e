"""The PromQL name reader the dashboard checks rely on."""

from __future__ import annotations

import pytest

from .exported_metrics import parse_exposition, series_labels
from .promql import labels_in_expr, names_in_expr, substitute, variable_query_expr, variables_in


def test_names_skip_functions_keywords_durations_and_strings() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_bucket{model=~"$model",x="b_c"}[5m30s])))'
        " / on (model) group_left (file) max without (instance) (b offset 1h) > bool 0.5e-3"
        " unless c and count_over_time(d[$__rate_interval:1m]) or vector(1) or Inf"
    )
    assert names_in_expr(expr) == {"a_bucket", "b", "c", "d"}


def test_labels_are_matchers_plus_every_grouping_label() -> None:
    expr = 'sum by (model, code) (rate(x_total{model=~"m", code!~"2.."}[1m])) / ignoring (code) y'
    assert labels_in_expr(expr) == {"x_total": {"model", "code"}, "y": {"model", "code"}}


def test_aggregation_clause_after_the_body_counts() -> None:
    assert labels_in_expr("sum(rate(x[1m])) by (reason)") == {"x": {"reason"}}


def test_bare_selector_with_name_matcher() -> None:
    assert labels_in_expr('{__name__="up", job="slm-worker"}') == {"up": {"job"}}


def test_regex_values_with_braces_and_quotes_do_not_confuse_the_reader() -> None:
    expr = r'x{a=~"[0-9]{3}", b="say \"hi\" }"} + y'
    assert names_in_expr(expr) == {"x", "y"}
    assert labels_in_expr(expr)["x"] == {"a", "b"}


def test_unreadable_text_raises() -> None:
    with pytest.raises(ValueError):
        names_in_expr("rate(x[1m]) ? 1")


def test_variable_queries() -> None:
    assert variable_query_expr('label_values(m{a=~"$a"}, b)') == ('m{a=~"$a"}', "b")
    assert variable_query_expr("query_result(topk(3, m))") == ("topk(3, m)", None)
    with pytest.raises(ValueError):
        variable_query_expr("label_values(b)")


def test_grafana_variables_are_found_and_substituted() -> None:
    expr = 'x{a=~"$model", b=~"${backend:regex}", c="[[instance]]"}[$__rate_interval]'
    assert variables_in(expr) == {"model", "backend", "instance", "__rate_interval"}
    values = {"model": ".*", "backend": "b", "instance": "i", "__rate_interval": "1m"}
    assert substitute(expr, values) == 'x{a=~".*", b=~"b", c="i"}[1m]'
    with pytest.raises(KeyError):
        substitute("$unknown", values)


def test_histogram_series_resolve_to_their_labels() -> None:
    bucket = series_labels("slm_time_to_first_token_seconds_bucket")
    assert bucket is not None and {"model", "backend", "le", "instance", "job"} <= bucket
    count = series_labels("slm_time_to_first_token_seconds_count")
    assert count is not None and "le" not in count
    assert series_labels("slm_time_to_first_token_seconds") is None  # a histogram has no bare series
    assert series_labels("slm_requests_total_bucket") is None
    assert series_labels("slm_nonexistent") is None


EXPOSITION = """\
# HELP slm_requests Requests.
# TYPE slm_requests counter
slm_requests_total{model="m",backend="local",endpoint="chat",stream="false",code="200"} 3.0
slm_requests_created{model="m",backend="local",endpoint="chat",stream="false",code="200"} 1.7e9
# HELP slm_ttft_seconds TTFT.
# TYPE slm_ttft_seconds histogram
slm_ttft_seconds_bucket{model="m",backend="local",le="0.1"} 1.0
slm_ttft_seconds_bucket{model="m",backend="local",le="+Inf"} 3.0
slm_ttft_seconds_count{model="m",backend="local"} 3.0
slm_ttft_seconds_sum{model="m",backend="local"} 0.9
# HELP slm_queue_depth Queue.
# TYPE slm_queue_depth gauge
slm_queue_depth{model="m"} 0.0
# HELP slm_redeliveries Redeliveries.
# TYPE slm_redeliveries counter
"""


def test_parse_exposition_builds_the_contract_shape() -> None:
    metrics, histograms = parse_exposition(EXPOSITION)
    assert metrics == {
        "slm_requests_total": {"model", "backend", "endpoint", "stream", "code"},
        "slm_ttft_seconds": {"model", "backend"},
        "slm_queue_depth": {"model"},
        "slm_redeliveries_total": set(),
    }
    assert histograms == {"slm_ttft_seconds"}
    bucket = series_labels("slm_ttft_seconds_bucket", metrics, histograms)
    assert bucket is not None and "le" in bucket
