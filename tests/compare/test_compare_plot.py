"""compare.png: a valid PNG, one labelled point per model, spread drawn as error bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import image as mpimg
from matplotlib.container import ErrorbarContainer
from PIL import Image

from server.compare.plot import plot_comparison, png_metadata, save_png
from server.compare.runner import RequestResult, apply_timings
from server.compare.stats import ModelSummary, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def summary(model: str, totals_ms: list[float], scores: list[float]) -> ModelSummary:
    results = []
    for index, (total, score) in enumerate(zip(totals_ms, scores, strict=True)):
        r = RequestResult(
            model, f"q{index}", 1, "exact", None, score=score, client_ttft_ms=1.0, client_total_ms=2.0
        )
        apply_timings(r, {"prompt_ms": total * 0.2, "predicted_ms": total * 0.8})
        results.append(r)
    return summarise(model, results)


def test_png_with_two_labelled_models(tmp_path: Path) -> None:
    summaries = [
        summary("smollm2", [900.0, 1000.0, 1400.0], [1.0, 0.0, 1.0]),
        summary("gemma3-270m", [500.0, 600.0, 700.0], [0.0, 0.0, 1.0]),
    ]
    fig = plot_comparison(summaries, "test")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["smollm2", "gemma3-270m"]
    legend = ax.get_legend()
    assert legend is not None
    # both are on the Pareto front: gemma3-270m is faster, smollm2 better
    assert [t.get_text() for t in legend.get_texts()] == ["Pareto front", "smollm2", "gemma3-270m"]
    # each point sits at (median total s, quality)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in bars] == ["smollm2", "gemma3-270m"]
    assert [np.asarray(c.lines[0].get_xydata())[0].tolist() for c in bars] == [[1.0, 2 / 3], [0.6, 1 / 3]]
    assert all(c.has_xerr and c.has_yerr for c in bars)
    assert ax.get_xscale() == "linear"

    path = save_png(fig, tmp_path / "compare.png", png_metadata(summaries, "test"))
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 300
        assert img.info["Description"] == "models: smollm2, gemma3-270m"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300


def test_far_apart_models_get_a_log_axis_and_failed_ones_a_note() -> None:
    summaries = [
        summary("hosted", [100.0], [1.0]),
        summary("local", [10_000.0], [0.5]),
        summarise("broken", []),
    ]
    fig = plot_comparison(summaries, "test")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["hosted", "local"]
    assert any("broken" in t.get_text() for t in fig.texts)


def test_nothing_to_plot_still_draws(tmp_path: Path) -> None:
    fig = plot_comparison([summarise("broken", [])], "empty")
    assert save_png(fig, tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
