"""Summary statistics: the spread of each measure and the per-model summary."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from server.compare.runner import RequestResult


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
    quality: float
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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timing_sources"] = list(self.timing_sources)
        out["served_by"] = list(self.served_by)
        return out


def summarise(model: str, results: Sequence[RequestResult]) -> ModelSummary:
    """Quality counts every request (a failed one scores 0); the timings only the successful ones.

    The standard error of the quality is taken over items (each item's mean over its repeats): the
    repeats of one item are not independent draws, the items are.
    """
    ok = [r for r in results if r.error is None]
    quality = statistics.fmean(r.score for r in results) if results else 0.0
    by_item: dict[str, list[float]] = {}
    for r in results:
        by_item.setdefault(r.item_id, []).append(r.score)
    item_means = [statistics.fmean(scores) for scores in by_item.values()]
    quality_se = statistics.stdev(item_means) / math.sqrt(len(item_means)) if len(item_means) > 1 else 0.0
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
    )
