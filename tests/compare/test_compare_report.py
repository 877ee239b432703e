"""report.md and results.json tell the same story; total = prompt evaluation + generation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from server.compare.evalset import ChatMessage, EvalItem
from server.compare.report import (
    RunMeta,
    render_report,
    results_document,
    write_report_md,
    write_results_json,
)
from server.compare.runner import ModelRun, RequestResult, apply_timings
from server.compare.stats import summarise

USER: tuple[ChatMessage, ...] = ({"role": "user", "content": "q"},)
ITEMS = [EvalItem("q1", USER, ("B",), "choice", "en"), EvalItem("q|2", USER, ("4",), "contains", "fr")]


def make_run(model: str, prompt_ms: list[float], predicted_ms: list[float], scores: list[float]) -> ModelRun:
    run = ModelRun(model)
    for index, (p, g, s) in enumerate(zip(prompt_ms, predicted_ms, scores, strict=True)):
        r = RequestResult(model, ITEMS[index % 2].id, 1 + index // 2, "choice", "en", answer="B", score=s)
        r.client_ttft_ms, r.client_total_ms = p + 3, p + g + 5
        apply_timings(
            r, {"prompt_ms": p, "predicted_ms": g, "predicted_n": 8, "queue_ms": 1.0, "ttft_ms": p + 1}
        )
        run.results.append(r)
    return run


def meta() -> RunMeta:
    return RunMeta("http://127.0.0.1:8000/v1", "builtin:default_eval.jsonl", "ab" * 32, 2, 64, 0.0, 2, 1)


def test_results_json_and_report_agree(tmp_path: Path) -> None:
    runs = [
        make_run("smollm2", [100, 120, 110, 130], [400, 500, 450, 470], [1, 0, 1, 1]),
        make_run("gemma3-270m", [50, 60, 55, 65], [200, 260, 240, 220], [0, 0, 1, 0]),
    ]
    broken = ModelRun("broken", skipped="warm-up failed: HTTP 400: nope")
    runs.append(broken)
    summaries = [summarise(r.model, r.results) for r in runs]
    doc = results_document(meta(), runs, summaries)
    write_results_json(tmp_path / "results.json", doc)
    loaded = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert loaded == json.loads(json.dumps(doc))

    for request in loaded["requests"]:
        assert request["total_ms"] == pytest.approx(request["prompt_ms"] + request["predicted_ms"])
    by_model = {m["model"]: m for m in loaded["models"]}
    for model in ("smollm2", "gemma3-270m"):
        rows = [r for r in loaded["requests"] if r["model"] == model]
        summary = by_model[model]
        assert summary["total_ms"]["median"] == statistics.median(r["total_ms"] for r in rows)
        assert summary["prompt_ms"]["median"] == statistics.median(r["prompt_ms"] for r in rows)
        assert summary["quality"] == statistics.fmean(r["score"] for r in rows)
    assert by_model["broken"]["skipped"] == "warm-up failed: HTTP 400: nope"
    assert by_model["broken"]["total_ms"] is None

    text = write_report_md(tmp_path / "report.md", meta(), runs, summaries, ITEMS).read_text(encoding="utf-8")
    assert "![speed against quality](compare.png)" in text
    row = next(line for line in text.splitlines() if line.startswith("| smollm2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{by_model['smollm2']['quality']:.3f} ± {by_model['smollm2']['quality_se']:.3f}"
    assert cells[2] == "4 / 4"
    assert cells[3].startswith(f"{by_model['smollm2']['total_ms']['median'] / 1000:.2f} (")
    assert cells[4].startswith(f"{by_model['smollm2']['prompt_ms']['median']:.0f} (")
    assert cells[-1] == "server"
    assert "| broken | - | 0 / 0 | - |"  # no scored request: no quality in text
    assert "- **broken**: warm-up failed: HTTP 400: nope" in text
    # per-item table: mean over the two repeats, the pipe in an id escaped
    assert "| q1 | en | choice | 1.00 | 0.50 | - |" in text
    assert "| q\\|2 | fr | contains | 0.50 | 0.00 | - |" in text


def test_report_marks_failures_and_interruptions() -> None:
    run = make_run("m", [10], [20], [1])
    failed = RequestResult("m", "q|2", 1, "contains", "fr", error="HTTP 500: boom")
    run.results.append(failed)
    interrupted = RunMeta("u", "mine.jsonl", "0" * 64, 2, 64, 0.0, 1, 1, interrupted=True)
    text = render_report(interrupted, [run], [summarise("m", run.results)], ITEMS)
    assert "(interrupted: partial results)" in text
    assert "| q\\|2 | fr | contains | err |" in text
    assert "1 failed request(s); last: HTTP 500: boom" in text
