"""The load generator's arithmetic: percentiles and the run summary (no I/O)."""

from __future__ import annotations

import pytest

from server.bench import RequestResult, distribution_ms, percentile, summarise


def test_percentile_interpolates_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_of_one_value_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_refuses_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1.0], q)


def test_distribution_is_in_milliseconds_and_empty_is_none() -> None:
    assert distribution_ms([0.010, 0.020, 0.030]) == {"p50": 20.0, "p90": 28.0, "p99": 29.8, "mean": 20.0}
    assert distribution_ms([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_summary_counts_tokens_rates_and_errors() -> None:
    results = [
        RequestResult(e2e_s=1.0, ttft_s=0.1, itl_s=[0.01, 0.03], content_chunks=3, usage_tokens=4),
        RequestResult(e2e_s=2.0, ttft_s=0.3, itl_s=[0.02], content_chunks=2),  # no usage: count chunks
        RequestResult(e2e_s=0.5, error="HTTP 500"),
        RequestResult(e2e_s=0.5, error="HTTP 500"),
        RequestResult(e2e_s=9.0, error="timeout"),
    ]
    summary = summarise(results, duration_s=2.0)
    assert summary["requests"] == 5
    assert summary["completed"] == 2
    assert summary["errors"] == 3
    assert summary["error_kinds"] == {"HTTP 500": 2, "timeout": 1}
    assert summary["completion_tokens"] == 6  # 4 from usage + 2 chunks; failed requests add nothing
    assert summary["content_chunks"] == 5
    assert summary["completion_tokens_per_s"] == 3.0
    assert summary["requests_per_s"] == 1.0
    assert summary["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert summary["itl_ms"]["p50"] == pytest.approx(20.0)
    assert summary["e2e_ms"]["p99"] == pytest.approx(1990.0)  # failed requests are not in the latencies
    assert summary["usage_reported"] is False


def test_summary_of_nothing_does_not_divide_by_zero() -> None:
    summary = summarise([], duration_s=0.0)
    assert summary["completion_tokens_per_s"] == 0.0
    assert summary["requests_per_s"] == 0.0
    assert summary["ttft_ms"]["p50"] is None
    assert summary["usage_reported"] is False
