"""Summary statistics: spread of a measure, per-model summary, server vs client timings."""

from __future__ import annotations

from typing import Any

import pytest

from server.compare.runner import RequestResult, apply_timings
from server.compare.stats import spread, summarise


def result(
    model: str, score: float, prompt_ms: float, predicted_ms: float, error: str | None = None, item: str = ""
) -> RequestResult:
    item = item or f"q{prompt_ms:g}-{predicted_ms:g}"
    r = RequestResult(model, item, 1, "exact", "en", score=score, error=error, served_by=model)
    r.client_ttft_ms, r.client_total_ms = prompt_ms + 5, prompt_ms + predicted_ms + 8
    timings = {"prompt_ms": prompt_ms, "predicted_ms": predicted_ms, "predicted_n": 10, "queue_ms": 2.0}
    apply_timings(r, timings)
    return r


def test_spread_quartiles_and_extremes() -> None:
    s = spread([4.0, 1.0, 3.0, 2.0, 5.0])
    assert s is not None
    assert (s.n, s.median, s.p25, s.p75, s.min, s.max, s.mean) == (5, 3.0, 2.0, 4.0, 1.0, 5.0, 3.0)


def test_spread_of_one_value_and_of_nothing() -> None:
    one = spread([7.0, None])
    assert one is not None and (one.n, one.median, one.p25, one.p75) == (1, 7.0, 7.0, 7.0)
    assert spread([]) is None
    assert spread([None, float("nan")]) is None


def test_summary_counts_failures_as_zero_quality_but_not_in_timings() -> None:
    results = [
        result("m", 1.0, 100.0, 400.0),
        result("m", 1.0, 200.0, 600.0),
        result("m", 0.0, 0.0, 0.0, error="HTTP 500: boom"),
    ]
    results[2].timing_source = None
    s = summarise("m", results)
    assert (s.requests, s.ok, s.errors) == (3, 2, 1)
    assert s.quality == pytest.approx(2 / 3)
    assert s.quality_se == pytest.approx(0.3333333, rel=1e-4)  # sd 0.577 / sqrt(3)
    assert s.total_ms is not None and s.total_ms.median == pytest.approx(650.0)
    assert s.prompt_ms is not None and s.prompt_ms.median == pytest.approx(150.0)
    assert s.tokens_per_s is not None and s.tokens_per_s.max == pytest.approx(25.0)
    assert s.timing_sources == ("server",) and s.served_by == ("m",)
    assert s.last_error == "HTTP 500: boom"


def test_quality_error_is_taken_over_items_not_repeats() -> None:
    results = [
        result("m", s, 10.0, 10.0, item=i) for i, s in [("a", 1), ("a", 1), ("a", 1), ("b", 0), ("b", 0)]
    ]
    s = summarise("m", results)
    assert s.quality == pytest.approx(0.6)  # every request counts
    assert s.quality_se == pytest.approx(0.5)  # item means 1 and 0: sd 0.707 / sqrt(2)


def test_summary_of_a_model_without_results() -> None:
    s = summarise("gone", [])
    assert (s.requests, s.ok, s.quality, s.total_ms) == (0, 0, None, None)


def test_server_timings_fill_the_figures() -> None:
    r = RequestResult(
        "m", "q", 1, "exact", None, client_ttft_ms=80.0, client_total_ms=300.0, completion_tokens=9
    )
    timings: dict[str, Any] = {
        "queue_ms": 3.0, "prompt_n": 12, "prompt_ms": 50.0, "predicted_n": 10,
        "predicted_ms": 200.0, "ttft_ms": 60.0, "total_ms": 250.0,
    }  # fmt: skip
    apply_timings(r, timings)
    assert r.timing_source == "server"
    assert (r.queue_ms, r.prompt_ms, r.predicted_ms, r.total_ms, r.ttft_ms) == (3.0, 50.0, 200.0, 250.0, 60.0)
    assert r.prompt_tokens == 12
    assert r.tokens_per_s == pytest.approx(50.0)


def test_total_is_prompt_plus_generation_when_the_server_omits_it() -> None:
    r = RequestResult("m", "q", 1, "exact", None, client_ttft_ms=1.0, client_total_ms=2.0)
    apply_timings(r, {"prompt_ms": 10, "predicted_ms": 15.5})
    assert r.total_ms == pytest.approx(25.5)
    assert r.tokens_per_s is None  # no token count at all


def test_client_clock_stands_in_without_server_timings() -> None:
    r = RequestResult(
        "m", "q", 1, "exact", None, client_ttft_ms=120.0, client_total_ms=520.0, completion_tokens=20
    )
    apply_timings(r, None)
    assert r.timing_source == "client"
    assert (r.prompt_ms, r.predicted_ms, r.total_ms, r.ttft_ms) == (120.0, 400.0, 520.0, 120.0)
    assert r.queue_ms is None
    assert r.tokens_per_s == pytest.approx(50.0)


def test_partial_or_odd_timings_fall_back_to_the_client() -> None:
    r = RequestResult("m", "q", 1, "exact", None, client_ttft_ms=10.0, client_total_ms=30.0)
    apply_timings(r, {"prompt_ms": "fast", "predicted_ms": 3.0})
    assert r.timing_source == "client" and r.total_ms == 30.0
