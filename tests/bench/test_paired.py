"""`make bench`'s paired method: rounds in rotating order, figures as the median of per-round ratios."""

from __future__ import annotations

from typing import Any

from benchmarks.paired import Sample, long_prompt, medians, ratios, summarise, workloads
from benchmarks.report import GOALS, paired_summary, render


def row(tokens_per_s: float, ttft: float, itl99: float, **more: Any) -> dict[str, Any]:
    base = {"tokens_per_s": tokens_per_s, "ttft_p50": ttft, "ttft_p99": ttft * 2, "itl_p50": itl99 / 2,
            "itl_p99": itl99, "cpu_ms_per_token": 1.0, "prompt_ms_p50": 5.0, "worker_cpu_ms_per_token": None,
            "errors": 0}
    return {**base, **more}


def test_long_prompts_are_distinct_from_their_first_words_and_repeatable() -> None:
    assert long_prompt(3, 1000) == long_prompt(3, 1000)
    first, second = long_prompt(3, 1000), long_prompt(4, 1000)
    assert first.split()[:2] != second.split()[:2]
    assert 900 < len(first.split()) < 1200


def test_the_ratio_is_taken_within_each_round_then_the_median() -> None:
    # round 2 is a slow host for both: the paired ratio stays 1.1 where a ratio of medians would not
    per_round = {"ours": [row(110, 50, 20), row(55, 100, 40), row(121, 45, 18)],
                 "llama_server": [row(100, 50, 20), row(50, 100, 40), row(110, 50, 20)]}
    result = ratios(per_round, "ours", "llama_server")
    assert result["tokens_per_s"] == 1.1
    assert result["ttft_p50"] == 1.0
    assert medians(per_round["ours"])["tokens_per_s"] == 110


def test_goals_are_judged_on_the_paired_ratios() -> None:
    rounds = {"short-c8": {"ours": [row(100, 40, 30)] * 4, "llama_server": [row(100, 50, 20)] * 4}}
    entry = paired_summary(rounds)["short-c8"]
    assert set(entry["goals"]) == set(GOALS)
    assert entry["goals"] == {"tokens_per_s": True, "ttft_p50": True, "itl_p99": False}  # 1.5x > 1.2x


def test_a_workload_summary_shows_the_kind_it_reports_and_counts_every_token() -> None:
    samples = [Sample(0.05, [0.01, 0.02], 64, 3.0, None, "short"), Sample(2.0, [0.3], 64, 1900.0, None, "long"),
               Sample(None, [], 0, None, "HTTP 500", "short")]
    figures = summarise(samples, "short", duration_s=2.0, cpu_s=1.28, worker_cpu_s=0.64)
    assert figures["errors"] == 1 and figures["shown"] == 1
    assert figures["tokens_per_s"] == 64.0 and figures["ttft_p50"] == 50.0
    assert figures["cpu_ms_per_token"] == 10.0 and figures["worker_cpu_ms_per_token"] == 5.0
    assert [w.name for w in workloads(4, 2)] == ["short-c1", "short-c4", "short-c8", "long-c4", "mixed"]
    # one client at a time: as many samples a round as four clients get
    assert [w.short_clients * w.short_requests_per_client for w in workloads(4, 2)][:2] == [16, 16]


def test_the_decode_loop_phases_are_the_median_over_rounds_of_each_server_that_reported_them() -> None:
    phases = [{"step": 6.0 + r, "emit": 0.4, "emit_cpu": 0.1 * r, "between": 0.12} for r in range(3)]
    rounds = {"short-c1": {"ours": [row(150, 12, 11, steps_ms=p) for p in phases],
                           "llama_server": [row(160, 11, 10)] * 3}}
    summary = paired_summary(rounds)
    assert summary["short-c1"]["steps_ms"] == {"ours": {"step": 7.0, "emit": 0.4, "emit_cpu": 0.1, "between": 0.12}}
    meta = {"date": "d", "cpus": 2, "machine": "m", "loadavg_before": [], "loadavg_after": [], "model": "m",
            "threads": 2, "max_tokens": 64, "rounds": 3, "requests_per_client": 4, "long_requests_per_client": 2,
            "long_words": 1100, "llama_cpp_python": "x"}
    text = render({"meta": meta, "summary": summary, "servers": {}})
    assert "| short-c1 | slm-server (this repo, `serve`, parallel 8) | 7.000 | 0.400 | 0.100 | 0.120 |" in text
