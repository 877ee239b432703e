"""compare.png: median total time per request (x) against quality score (y), one point per model.

Drawn on a bare `Figure` with the Agg canvas: no pyplot, no global backend switch, no display.
Error bars: x from the 25th to the 75th percentile of total time, y +/- one standard error of the
mean score. A model with no successful request has no time to plot and is named in the footnote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from server.compare.stats import ModelSummary

LOG_SCALE_RATIO = 30.0  # switch the time axis to log scale when the slowest/fastest ratio is above


def plot_comparison(summaries: Sequence[ModelSummary], title: str) -> Figure:
    fig = Figure(figsize=(8.0, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plotted = [s for s in summaries if s.total_ms is not None]
    for summary in plotted:
        assert summary.total_ms is not None
        spread = summary.total_ms
        x = spread.median / 1000
        xerr = [[max(0.0, x - spread.p25 / 1000)], [max(0.0, spread.p75 / 1000 - x)]]
        ax.errorbar(
            [x], [summary.quality], xerr=xerr, yerr=[summary.quality_se],
            fmt="o", capsize=4, markersize=7, label=summary.model,
        )  # fmt: skip
        ax.annotate(summary.model, (x, summary.quality), xytext=(6, 6), textcoords="offset points")
    medians = [s.total_ms.median for s in plotted if s.total_ms is not None and s.total_ms.median > 0]
    if medians and max(medians) / min(medians) > LOG_SCALE_RATIO:
        ax.set_xscale("log")
    elif medians:
        ax.set_xlim(
            left=0.0, right=max(s.total_ms.p75 for s in plotted if s.total_ms) / 1000 * 1.3
        )  # room for the labels
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("median total time per request (s) = prompt evaluation + generation")
    ax.set_ylabel("quality score (mean, 0..1)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(loc="best", fontsize="small")
    notes = ["bars: time p25-p75, quality +/- 1 standard error"]
    missing = [s.model for s in summaries if s.total_ms is None]
    if missing:
        notes.append("not plotted (no successful request): " + ", ".join(missing))
    fig.supxlabel("; ".join(notes), fontsize="x-small", color="0.35")  # laid out, unlike fig.text
    return fig


def png_metadata(summaries: Sequence[ModelSummary], title: str) -> dict[str, str]:
    """PNG text chunks naming the plotted models, so that a script can check the image's content."""
    plotted = [s.model for s in summaries if s.total_ms is not None]
    return {"Title": title, "Description": "models: " + ", ".join(plotted), "Software": "slm-server compare"}


def save_png(fig: Figure, path: Path, metadata: dict[str, str] | None = None) -> Path:
    fig.savefig(path, format="png", metadata=metadata)
    return path
