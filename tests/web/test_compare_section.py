"""The page at `/` shows the latest `slm-server compare` results when `SLM_COMPARE_RESULTS` names a
results.json (a real server, a real browser), and hides the section on a server without them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from server.compare.latest import latest_summary
from tests.conftest import SMOLLM2, LiveServer, start_server, stop_server
from tests.web.conftest import OpenPage

# one model, started only when asked for (never, here): the page needs a model listed, not a worker or litellm
REGISTRY = f"""
models:
  on-demand-one:
    gguf: {SMOLLM2}
    load: on_demand
"""
RESULTS: dict[str, Any] = {
    "version": 2,
    "meta": {"created": "2026-12-03T12:00:00+00:00", "eval_source": "builtin:multiturn_eval.jsonl", "items": 10},
    "models": [
        {"model": "smollm2", "quality": None, "judge_score": 3.25, "total_ms": {"median": 1234.0},
         "cost_per_1000": 0.0172, "ok": 20, "requests": 20},
        {"model": "gemma3-270m", "quality": 0.5, "judge_score": 4.5, "total_ms": {"median": 2500.0},
         "cost_per_1000": None, "ok": 20, "requests": 20},
    ],
    "judge": {"model": "gemma3-270m"},
    "pairwise": {"baseline": "gemma3-270m", "summary": [{"model": "smollm2", "win_rate": 0.25}]},
}  # fmt: skip


def test_latest_summary(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    assert latest_summary(path) is None  # no file
    path.write_text("{not json", encoding="utf-8")
    assert latest_summary(path) is None
    path.write_text(json.dumps(RESULTS), encoding="utf-8")
    summary = latest_summary(path)
    assert summary is not None
    assert (summary["judge"], summary["baseline"], summary["items"]) == ("gemma3-270m", "gemma3-270m", 10)
    assert summary["models"][0] == {"model": "smollm2", "quality": None, "judge_score": 3.25,
                                    "median_total_ms": 1234.0, "cost_per_1000": 0.0172, "win_rate": 0.25,
                                    "ok": 20, "requests": 20}  # fmt: skip


def serve(tmp: Path, results: Path | None) -> LiveServer:
    env: dict[str, str] = {}
    if results is not None:
        env["SLM_COMPARE_RESULTS"] = str(results)
    return start_server(tmp, REGISTRY, timeout_s=60, env=env)


@pytest.fixture(scope="module")
def compare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("web-compare")
    results = tmp / "results.json"
    results.write_text(json.dumps(RESULTS), encoding="utf-8")
    live = serve(tmp, results)
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = serve(tmp_path_factory.mktemp("web-plain"), None)
    try:
        yield live
    finally:
        stop_server(live)


def test_the_page_shows_the_compare_results(compare_server: LiveServer, open_page: OpenPage) -> None:
    reply = httpx.get(compare_server.url + "/v1/compare", timeout=10)
    assert reply.status_code == 200 and reply.json()["results"]["models"][1]["model"] == "gemma3-270m"
    page = open_page(compare_server.url).page
    page.goto("/")
    expect(page.locator("#compare")).to_be_visible()
    rows = page.locator("#compare-table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text(["smollm2", "—", "3.25", "0.25", "1.23 s", "$0.0172"])
    expect(rows.nth(1).locator("td")).to_have_text(["gemma3-270m", "0.500", "4.50", "—", "2.50 s", "—"])
    expect(page.locator("#compare-about")).to_contain_text("judged by gemma3-270m against gemma3-270m")


def test_a_server_without_results_hides_the_section(plain_server: LiveServer, open_page: OpenPage) -> None:
    reply = httpx.get(plain_server.url + "/v1/compare", timeout=10)
    assert reply.json() == {"object": "compare.summary", "results": None}
    page = open_page(plain_server.url).page
    with page.expect_response(lambda r: r.url.endswith("/v1/compare")):
        page.goto("/")
    expect(page.locator("#compare")).to_be_hidden()
