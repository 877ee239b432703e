"""The latest `compare` results as the page at `/` shows them: a small summary of a results.json.

The gateway reads the file named by `SLM_COMPARE_RESULTS` on each request (a run may rewrite it at any
time); nothing here imports the chart or HTTP code of `compare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def latest_summary(path: Path) -> dict[str, Any] | None:
    """Per model: quality, judge score, median total time, cost of 1,000 requests, win rate against the
    baseline; None when the file is missing or is not a compare results document."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list) or not isinstance(doc.get("meta"), dict):
        return None
    pairwise = _mapping(doc.get("pairwise"))
    win_rates = {p.get("model"): p.get("win_rate") for p in pairwise.get("summary") or [] if isinstance(p, dict)}
    judge = _mapping(doc.get("judge"))
    meta = doc["meta"]
    models = []
    for m in doc["models"]:
        if not isinstance(m, dict):
            continue
        total = _mapping(m.get("total_ms"))
        models.append({
            "model": m.get("model"), "quality": m.get("quality"), "judge_score": m.get("judge_score"),
            "median_total_ms": total.get("median"), "cost_per_1000": m.get("cost_per_1000"),
            "win_rate": win_rates.get(m.get("model")), "ok": m.get("ok"), "requests": m.get("requests"),
        })  # fmt: skip
    return {
        "created": meta.get("created"),
        "eval_source": meta.get("eval_source"),
        "items": meta.get("items"),
        "judge": judge.get("model"),
        "baseline": pairwise.get("baseline"),
        "models": models,
    }


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
