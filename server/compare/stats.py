"""Summary statistics: the spread of each measure and the per-model summary."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from server.compare.cost import cost_per_thousand
from server.compare.runner import RequestResult

OTHER_CATEGORY = "other"


@dataclass(frozen=True)
class Spread:
    n: int
    median: float
    p25: float
    p75: float
    min: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, quartiles (inclusive method), extremes and mean of the values that are not None."""
    data = sorted(v for v in values if v is not None and math.isfinite(v))
    if not data:
        return None
    if len(data) == 1:
        p25 = p75 = data[0]
    else:
        p25, _, p75 = statistics.quantiles(data, n=4, method="inclusive")
    return Spread(len(data), statistics.median(data), p25, p75, data[0], data[-1], statistics.fmean(data))


@dataclass(frozen=True)
class ModelSummary:
    model: str
    requests: int
    ok: int
    errors: int
    quality: float | None  # rule-based items, 0..1; None when every item is for the judge
    quality_se: float
    timing_sources: tuple[str, ...]
    served_by: tuple[str, ...]
    total_ms: Spread | None
    prompt_ms: Spread | None
    predicted_ms: Spread | None
    ttft_ms: Spread | None
    client_ttft_ms: Spread | None
    queue_ms: Spread | None
    tokens_per_s: Spread | None
    last_error: str | None = None
    judge_score: float | None = None  # mean 1..10 over the judged answers
    judge_se: float = 0.0
    judged: int = 0
    judge_missing: int = 0  # successful answers whose verdict stayed unreadable
    cost_per_1000: float | None = None
    categories: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timing_sources"] = list(self.timing_sources)
        out["served_by"] = list(self.served_by)
        return out


def summarise(model: str, results: Sequence[RequestResult]) -> ModelSummary:
    """Quality counts every rule-scored request (a failed one scores 0); the judge's score every
    successful answer that has a verdict; the timings and costs only the successful ones.

    Standard errors are taken over items (each item's mean over its repeats and turns): the repeats of
    one item are not independent draws, the items are.
    """
    ok = [r for r in results if r.error is None]
    quality, quality_se = _mean_and_se(results, lambda r: r.score)
    judged = [r for r in ok if r.judgement is not None]
    judge_score, judge_se = _mean_and_se(judged, lambda r: r.judge_score)
    errors = [r.error for r in results if r.error is not None]
    return ModelSummary(
        model=model,
        requests=len(results),
        ok=len(ok),
        errors=len(errors),
        quality=quality,
        quality_se=quality_se,
        timing_sources=tuple(sorted({r.timing_source for r in ok if r.timing_source})),
        served_by=tuple(sorted({r.served_by for r in ok if r.served_by})),
        total_ms=spread(r.total_ms for r in ok),
        prompt_ms=spread(r.prompt_ms for r in ok),
        predicted_ms=spread(r.predicted_ms for r in ok),
        ttft_ms=spread(r.ttft_ms for r in ok),
        client_ttft_ms=spread(r.client_ttft_ms for r in ok),
        queue_ms=spread(r.queue_ms for r in ok),
        tokens_per_s=spread(r.tokens_per_s for r in ok),
        last_error=errors[-1] if errors else None,
        judge_score=judge_score,
        judge_se=judge_se,
        judged=sum(r.judge_score is not None for r in judged),
        judge_missing=sum(r.judge_score is None for r in judged),
        cost_per_1000=cost_per_thousand([r.cost for r in ok]),
        categories=by_category(results),
    )


def _mean_and_se(
    results: Sequence[RequestResult], value: Callable[[RequestResult], float | None]
) -> tuple[float | None, float]:
    """Mean over the results that have a value; its standard error over items (each item's mean)."""
    scored = [(r.item_id, v) for r in results if (v := value(r)) is not None]
    if not scored:
        return None, 0.0
    by_item: dict[str, list[float]] = {}
    for item_id, v in scored:
        by_item.setdefault(item_id, []).append(v)
    item_means = [statistics.fmean(values) for values in by_item.values()]
    se = statistics.stdev(item_means) / math.sqrt(len(item_means)) if len(item_means) > 1 else 0.0
    return statistics.fmean(v for _, v in scored), se


def by_category(results: Sequence[RequestResult]) -> dict[str, dict[str, float | int | None]]:
    """Per category (an item without one is `other`): rule quality, judge score, and how many answers."""
    out: dict[str, dict[str, float | int | None]] = {}
    names = sorted({r.category or OTHER_CATEGORY for r in results})
    for name in names:
        mine = [r for r in results if (r.category or OTHER_CATEGORY) == name]
        quality, _ = _mean_and_se(mine, lambda r: r.score)
        judge, _ = _mean_and_se([r for r in mine if r.error is None], lambda r: r.judge_score)
        out[name] = {"quality": quality, "judge_score": judge, "n": len(mine)}
    return out
