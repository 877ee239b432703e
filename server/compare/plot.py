"""The charts, one point (or bar group) per model:

    compare.png      median total time per request (x) against quality (y)
    cost.png         cost of 1,000 requests (x) against quality (y)
    categories.png   quality per item category, one bar per model

Quality is the judge's mean score (1..10) when the run had a judge, else the rule-based score (0..1).
On the two scatter charts the Pareto front (no other model both cheaper/faster and better) is drawn
as a step line and its models ringed. Drawn on a bare `Figure` with the Agg canvas: no pyplot, no
global backend switch, no display. Each PNG carries its title, axis labels and plotted models as
text chunks, so a script can check what it shows. Error bars: x from the 25th to the 75th percentile
of total time, y +/- one standard error of the mean score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from server.compare.stats import ModelSummary

LOG_SCALE_RATIO = 30.0  # switch the x axis to log scale when the largest/smallest ratio is above
TIME_LABEL = "median total time per request (s) = prompt evaluation + generation"
COST_LABEL = "cost of 1,000 requests (USD)"


@dataclass(frozen=True)
class Point:
    model: str
    x: float
    y: float


def quality_of(summary: ModelSummary, judged: bool) -> tuple[float | None, float]:
    if judged:
        return summary.judge_score, summary.judge_se
    return summary.quality, summary.quality_se


def quality_label(judged: bool) -> str:
    return "judge score (mean, 1..10)" if judged else "quality score (mean, 0..1)"


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points that no other point beats on both axes (lower x and higher y), by increasing x."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.x, -p.y)):
        if not front or point.y > front[-1].y:
            front.append(point)
    return front


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8.0, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _scatter(
    summaries: Sequence[ModelSummary], title: str, judged: bool, x_label: str, what: str, cost: bool
) -> Figure:
    fig, ax = _figure()
    points: list[Point] = []
    for s in summaries:
        y, y_se = quality_of(s, judged)
        if y is None:
            continue
        if cost:
            if s.cost_per_1000 is None:
                continue
            x, xerr = s.cost_per_1000, None
        else:
            if s.total_ms is None:
                continue
            x = s.total_ms.median / 1000
            xerr = [[max(0.0, x - s.total_ms.p25 / 1000)], [max(0.0, s.total_ms.p75 / 1000 - x)]]
        ax.errorbar([x], [y], xerr=xerr, yerr=[y_se], fmt="o", capsize=4, markersize=7, label=s.model)
        ax.annotate(s.model, (x, y), xytext=(6, 6), textcoords="offset points")
        points.append(Point(s.model, x, y))
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p.x for p in front], [p.y for p in front], where="post", color="0.5", linestyle="--",
                linewidth=1, label="Pareto front")  # fmt: skip
    if front:
        ax.scatter([p.x for p in front], [p.y for p in front], s=220, facecolors="none", edgecolors="0.3")
    xs = [p.x for p in points if p.x > 0]
    if xs and max(xs) / min(xs) > LOG_SCALE_RATIO:
        ax.set_xscale("log")
    elif xs:
        ax.set_xlim(left=0.0, right=max(xs) * 1.3)  # room for the labels
    ax.set_ylim(*((0.5, 10.5) if judged else (-0.05, 1.05)))
    ax.set_xlabel(x_label)
    ax.set_ylabel(quality_label(judged))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(loc="best", fontsize="small")
    notes = ["ringed: the Pareto front", "bars: quality +/- 1 standard error" + ("" if cost else ", time p25-p75")]
    missing = [s.model for s in summaries if s.model not in {p.model for p in points}]
    if missing:
        notes.append(f"not plotted (no {what}): " + ", ".join(missing))
    fig.supxlabel("; ".join(notes), fontsize="x-small", color="0.35")  # laid out, unlike fig.text
    return fig


def plot_comparison(summaries: Sequence[ModelSummary], title: str, judged: bool = False) -> Figure:
    return _scatter(summaries, title, judged, TIME_LABEL, "successful request or score", cost=False)


def plot_cost(summaries: Sequence[ModelSummary], title: str, judged: bool = False) -> Figure:
    return _scatter(summaries, title, judged, COST_LABEL, "price or score", cost=True)


def plot_categories(summaries: Sequence[ModelSummary], title: str, judged: bool = False) -> Figure:
    fig, ax = _figure()
    key = "judge_score" if judged else "quality"
    categories = sorted({c for s in summaries for c, v in s.categories.items() if v.get(key) is not None})
    width = 0.8 / max(1, len(summaries))
    for index, s in enumerate(summaries):
        values = [s.categories.get(c, {}).get(key) for c in categories]
        xs = [i + (index - (len(summaries) - 1) / 2) * width for i in range(len(categories))]
        ax.bar(xs, [float(v) if v is not None else 0.0 for v in values], width=width, label=s.model)
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set_ylim(*((0.0, 10.0) if judged else (0.0, 1.0)))
    ax.set_xlabel("item category")
    ax.set_ylabel(quality_label(judged))
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if summaries and categories:
        ax.legend(loc="best", fontsize="small")
    return fig


def png_metadata(
    summaries: Sequence[ModelSummary], title: str, fig: Figure | None = None
) -> dict[str, str]:
    """PNG text chunks: the title, the plotted models and (given the figure) its axis labels."""
    if fig is not None:
        ax = fig.axes[0]
        plotted = [t for t in ax.get_legend_handles_labels()[1] if t != "Pareto front"]
        meta = {"XLabel": ax.get_xlabel(), "YLabel": ax.get_ylabel()}
    else:
        plotted = [s.model for s in summaries if s.total_ms is not None]
        meta = {}
    return {"Title": title, "Description": "models: " + ", ".join(plotted), **meta, "Software": "slm-server compare"}


def save_png(fig: Figure, path: Path, metadata: dict[str, str] | None = None) -> Path:
    fig.savefig(path, format="png", metadata=metadata)
    return path
