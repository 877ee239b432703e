"""cost.png and categories.png, the judge's scale on the quality axis, and the Pareto front."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from server.compare.plot import (
    COST_LABEL,
    TIME_LABEL,
    Point,
    pareto_front,
    plot_categories,
    plot_comparison,
    plot_cost,
    png_metadata,
    save_png,
)
from server.compare.runner import RequestResult, apply_timings
from server.compare.stats import ModelSummary, summarise

MODELS = ("cheap", "middle", "dear", "dominated")


def summary(model: str, total_ms: float, cost: float, judged: list[tuple[str, float]]) -> ModelSummary:
    results = []
    for index, (category, score) in enumerate(judged):
        r = RequestResult(model, f"q{index}", 1, "judge", None, score=None, category=category,
                          client_ttft_ms=1.0, client_total_ms=2.0, judge_score=score, judgement={"value": score},
                          cost=cost)  # fmt: skip
        apply_timings(r, {"prompt_ms": total_ms / 2, "predicted_ms": total_ms / 2})
        results.append(r)
    return summarise(model, results)


def summaries() -> list[ModelSummary]:
    return [
        summary("cheap", 500.0, 0.0001, [("writing", 3.0), ("coding", 2.0)]),
        summary("middle", 1000.0, 0.001, [("writing", 6.0), ("coding", 5.0)]),
        summary("dear", 3000.0, 0.01, [("writing", 9.0), ("coding", 8.0)]),
        summary("dominated", 4000.0, 0.02, [("writing", 4.0), ("coding", 4.0)]),
    ]


def test_pareto_front() -> None:
    points = [Point("a", 1.0, 0.2), Point("b", 2.0, 0.5), Point("c", 3.0, 0.4), Point("d", 2.0, 0.3),
              Point("e", 0.5, 0.2)]  # fmt: skip
    assert [p.model for p in pareto_front(points)] == ["e", "b"]  # a ties e's quality at a higher x
    assert pareto_front([]) == []


@pytest.mark.parametrize(
    ("plot", "name", "x_label"),
    [(plot_comparison, "compare.png", TIME_LABEL), (plot_cost, "cost.png", COST_LABEL)],
)
def test_scatter_charts_mark_the_front_and_name_their_axes(
    plot: Callable[[list[ModelSummary], str, bool], Figure], name: str, x_label: str, tmp_path: Path
) -> None:
    s = summaries()
    fig = plot(s, "title", True)
    ax = fig.axes[0]
    front_line = next(line for line in ax.get_lines() if line.get_label() == "Pareto front")
    assert len(front_line.get_xdata()) == 3  # cheap, middle, dear: dominated is slower, dearer and worse
    assert ax.get_ylim() == (0.5, 10.5) and ax.get_ylabel() == "judge score (mean, 1..10)"
    path = save_png(fig, tmp_path / name, png_metadata(s, "title", fig))
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (960, 660)
        assert img.info["XLabel"] == x_label and img.info["YLabel"] == "judge score (mean, 1..10)"
        assert img.info["Description"] == "models: " + ", ".join(MODELS)


def test_cost_chart_leaves_out_models_without_a_price() -> None:
    s = [*summaries()[:2], summary("unpriced", 800.0, 0.0, [("writing", 5.0)])]
    s[2] = dataclasses.replace(s[2], cost_per_1000=None)
    fig = plot_cost(s, "title", True)
    meta = png_metadata(s, "title", fig)
    assert meta["Description"] == "models: cheap, middle"
    assert "not plotted (no price or score): unpriced" in fig.get_supxlabel()


def test_categories_chart(tmp_path: Path) -> None:
    s = summaries()
    fig = plot_categories(s, "per category", True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["coding", "writing"]
    heights = [round(bar.get_height(), 3) for bar in ax.patches]
    assert heights == [2.0, 3.0, 5.0, 6.0, 8.0, 9.0, 4.0, 4.0]  # per model: coding, writing
    path = save_png(fig, tmp_path / "categories.png", png_metadata(s, "per category", fig))
    with Image.open(path) as img:
        assert img.info["XLabel"] == "item category" and img.info["Description"] == "models: " + ", ".join(MODELS)
