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

from server.compare.cost import PriceBook
from server.compare.evalset import EvalItem
from server.compare.judge import JudgeUsage
from server.compare.judging import PairRecord, summarise_pairs
from server.compare.runner import ModelRun
from server.compare.stats import ModelSummary, Spread

RESULTS_VERSION = 2


@dataclass(frozen=True)
class Extras:
    """What a run adds beside the models' answers: the judge's own usage, the pairwise verdicts, prices."""

    judge: JudgeUsage | None = None
    baseline: str | None = None
    pairs: Sequence[PairRecord] = ()
    prices: PriceBook = field(default_factory=lambda: PriceBook({}))
    charts: Sequence[tuple[str, str]] = (("compare.png", "speed against quality"),)


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
    meta: RunMeta, runs: Sequence[ModelRun], summaries: Sequence[ModelSummary], extras: Extras | None = None
) -> dict[str, Any]:
    extras = extras or Extras()
    skipped = {run.model: run.skipped for run in runs}
    return {
        "version": RESULTS_VERSION,
        "meta": asdict(meta),
        "models": [{**s.to_dict(), "skipped": skipped.get(s.model)} for s in summaries],
        "requests": [r.to_dict() for run in runs for r in run.results],
        "judge": extras.judge.to_dict() if extras.judge is not None else None,
        "pairwise": {
            "baseline": extras.baseline,
            "summary": [p.to_dict() for p in summarise_pairs(extras.pairs)],
            "records": [r.to_dict() for r in extras.pairs],
        },
        "prices": extras.prices.to_dict(),
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
    extras: Extras | None = None,
) -> Path:
    path.write_text(render_report(meta, runs, summaries, items, extras), encoding="utf-8")
    return path


def render_report(
    meta: RunMeta,
    runs: Sequence[ModelRun],
    summaries: Sequence[ModelSummary],
    items: Sequence[EvalItem],
    extras: Extras | None = None,
) -> str:
    extras = extras or Extras()
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
        *[f"![{alt}]({name})" for name, alt in extras.charts],
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
            f"| {_cell(s.model)} | {_score(s.quality, s.quality_se, 3)} | {s.ok} / {s.requests} "
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
    lines += _judge_section(summaries, extras) + _cost_section(summaries, extras) + _category_table(summaries)
    lines += _item_table(runs, items)
    return "\n".join(lines) + "\n"


def _judge_section(summaries: Sequence[ModelSummary], extras: Extras) -> list[str]:
    judge = extras.judge
    if judge is None:
        return []
    lines = [
        "", f"## Judge: {_cell(judge.model)}", "",
        "Single-answer grading, 1-10 (MT-Bench's prompt, with the reference answer when the item has one). "
        "A verdict that cannot be read is asked once more, then counted as missing, never as a score.",
        "", "| model | judge score | judged | missing verdicts |", "|---|---|---|---|",
    ]  # fmt: skip
    lines += [f"| {_cell(s.model)} | {_score(s.judge_score, s.judge_se, 2)} | {s.judged} | {s.judge_missing} |"
              for s in summaries]  # fmt: skip
    pairs = summarise_pairs(extras.pairs)
    if pairs:
        lines += [
            "", f"Pairwise against **{_cell(extras.baseline or '')}**, each pair asked in both orders: a win or a "
            "loss only when both orders agree, a tie otherwise.", "",
            "| model | wins | ties | losses | missing | win rate |", "|---|---|---|---|---|---|",
        ]  # fmt: skip
        for p in pairs:
            rate = "-" if p.win_rate is None else f"{p.win_rate:.2f}"
            lines.append(f"| {_cell(p.model)} | {p.wins} | {p.ties} | {p.losses} | {p.missing} | {rate} |")
    cost = "-" if judge.cost is None else f"${judge.cost:.4f}"
    lines += [
        "", f"The judge's own use, apart from the models': {judge.requests} request(s), "
        f"{judge.total_ms / 1000:.1f} s, {judge.prompt_tokens} prompt + {judge.completion_tokens} completion "
        f"tokens, cost {cost}, {judge.missing} missing verdict(s).",
    ]  # fmt: skip
    return lines


def _cost_section(summaries: Sequence[ModelSummary], extras: Extras) -> list[str]:
    lines = ["", "## Cost", "", "| model | price | cost of 1,000 requests (USD) |", "|---|---|---|"]
    for s in summaries:
        price = extras.prices.price(s.model)
        if price is None:
            described = "none (no registry price, litellm price or per-hour price)"
        elif price.per_hour is not None:
            described = f"${price.per_hour:g} per hour ({price.source}) x measured time"
        else:
            described = (f"${price.input_per_million:g} / ${price.output_per_million:g} per M in/out tokens "
                         f"({price.source})")  # fmt: skip
        cost = "-" if s.cost_per_1000 is None else f"{s.cost_per_1000:.4f}"
        lines.append(f"| {_cell(s.model)} | {described} | {cost} |")
    return lines


def _category_table(summaries: Sequence[ModelSummary]) -> list[str]:
    names = sorted({c for s in summaries for c in s.categories})
    if len(names) < 2 and not any(s.judge_score is not None for s in summaries):
        return []
    lines = [
        "", "## Per category (rule quality 0..1 / judge score 1..10)", "",
        "| category | " + " | ".join(_cell(s.model) for s in summaries) + " |", "|---|" + "---|" * len(summaries),
    ]  # fmt: skip
    for name in names:
        cells = []
        for s in summaries:
            got = s.categories.get(name, {})
            quality, judge = got.get("quality"), got.get("judge_score")
            cells.append(f"{'-' if quality is None else f'{quality:.2f}'} / {'-' if judge is None else f'{judge:.1f}'}")
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return lines


def _score(value: float | None, se: float, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f} ± {se:.{digits}f}"


def _item_table(runs: Sequence[ModelRun], items: Sequence[EvalItem]) -> list[str]:
    lines = [
        "",
        "## Per item (mean score over repeats and turns, a judge-only item's score / 10; "
        "`err` = failed, `-` = not scored)",
        "",
        "| item | lang | scoring | " + " | ".join(_cell(run.model) for run in runs) + " |",
        "|---|---|---|" + "---|" * len(runs),
    ]
    for item in items:
        cells = []
        for run in runs:
            scores = [r.score for r in run.results if r.item_id == item.id and r.error is None and r.score is not None]
            scores += [r.judge_score / 10 for r in run.results
                       if r.item_id == item.id and r.score is None and r.judge_score is not None]  # fmt: skip
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
