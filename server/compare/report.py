"""report.md (the table a person reads) and results.json (every figure, per request and per model)."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.compare.evalset import EvalItem
from server.compare.runner import ModelRun
from server.compare.stats import ModelSummary, Spread

RESULTS_VERSION = 1


@dataclass(frozen=True)
class RunMeta:
    url: str
    eval_source: str
    eval_sha256: str
    items: int
    max_tokens: int
    temperature: float
    repeats: int
    warmup: int
    interrupted: bool = False
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def results_document(
    meta: RunMeta, runs: Sequence[ModelRun], summaries: Sequence[ModelSummary]
) -> dict[str, Any]:
    skipped = {run.model: run.skipped for run in runs}
    return {
        "version": RESULTS_VERSION,
        "meta": asdict(meta),
        "models": [{**s.to_dict(), "skipped": skipped.get(s.model)} for s in summaries],
        "requests": [r.to_dict() for run in runs for r in run.results],
    }


def write_results_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_report_md(
    path: Path,
    meta: RunMeta,
    runs: Sequence[ModelRun],
    summaries: Sequence[ModelSummary],
    items: Sequence[EvalItem],
    chart: str = "compare.png",
) -> Path:
    path.write_text(render_report(meta, runs, summaries, items, chart), encoding="utf-8")
    return path


def render_report(
    meta: RunMeta,
    runs: Sequence[ModelRun],
    summaries: Sequence[ModelSummary],
    items: Sequence[EvalItem],
    chart: str = "compare.png",
) -> str:
    machine = meta.machine
    lines = [
        "# slm-server compare",
        "",
        f"- date: {meta.created}" + (" (interrupted: partial results)" if meta.interrupted else ""),
        f"- server: {meta.url}",
        f"- evaluation set: `{meta.eval_source}` ({meta.items} items, sha256 {meta.eval_sha256[:12]}), "
        f"{meta.repeats} repeat(s), max_tokens {meta.max_tokens}, temperature {meta.temperature:g}",
        f"- machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs",
        "",
        f"![speed against quality]({chart})",
        "",
        "## Per model",
        "",
        "Times are medians over the successful requests, p25-p75 in brackets; total = prompt evaluation "
        "+ generation, as measured by the server (`timings: client` means the server sent no timings "
        "and the client's clock was used). Quality counts a failed request as 0.",
        "",
        "| model | quality | ok / requests | total s | prompt eval ms | generation ms | TTFT ms "
        "| tokens/s | queue ms | timings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {_cell(s.model)} | {s.quality:.3f} ± {s.quality_se:.3f} | {s.ok} / {s.requests} "
            f"| {_seconds(s.total_ms)} | {_ms(s.prompt_ms)} | {_ms(s.predicted_ms)} | {_ms(s.ttft_ms)} "
            f"| {_plain(s.tokens_per_s)} | {_ms(s.queue_ms)} | {', '.join(s.timing_sources) or '-'} |"
        )
    problems = [(run.model, run.skipped) for run in runs if run.skipped]
    problems += [
        (s.model, f"{s.errors} failed request(s); last: {s.last_error}") for s in summaries if s.errors
    ]
    if problems:
        lines += ["", "## Problems", ""]
        lines += [f"- **{_cell(model)}**: {_cell(str(text))}" for model, text in problems]
    lines += _item_table(runs, items)
    return "\n".join(lines) + "\n"


def _item_table(runs: Sequence[ModelRun], items: Sequence[EvalItem]) -> list[str]:
    lines = [
        "",
        "## Per item (mean score over repeats; `err` = failed, `-` = not run)",
        "",
        "| item | lang | scoring | " + " | ".join(_cell(run.model) for run in runs) + " |",
        "|---|---|---|" + "---|" * len(runs),
    ]
    for item in items:
        cells = []
        for run in runs:
            scores = [r.score for r in run.results if r.item_id == item.id and r.error is None]
            failed = any(r.item_id == item.id and r.error is not None for r in run.results)
            cells.append(f"{statistics.fmean(scores):.2f}" if scores else ("err" if failed else "-"))
        lines.append(f"| {_cell(item.id)} | {item.lang or ''} | {item.scoring} | " + " | ".join(cells) + " |")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _seconds(spread: Spread | None) -> str:
    if spread is None:
        return "-"
    return f"{spread.median / 1000:.2f} ({spread.p25 / 1000:.2f}-{spread.p75 / 1000:.2f})"


def _ms(spread: Spread | None) -> str:
    if spread is None:
        return "-"
    return f"{spread.median:.0f} ({spread.p25:.0f}-{spread.p75:.0f})"


def _plain(spread: Spread | None) -> str:
    return "-" if spread is None else f"{spread.median:.1f}"
