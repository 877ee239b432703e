"""`slm-server compare`: the command-line face. `add_arguments(parser)` then `run(args)` -> exit code.

Exit codes: 0 all models measured; 1 a model could not be measured (outputs still written) or the
server cannot be reached; 2 bad usage or a malformed eval file; 130 interrupted (partial outputs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.compare.errors import CompareError, UsageError
from server.compare.evalset import EvalSet, load_eval_set
from server.compare.plot import plot_comparison, png_metadata, save_png
from server.compare.report import RunMeta, results_document, write_report_md, write_results_json
from server.compare.runner import (
    ModelRun,
    Progress,
    RunConfig,
    Runner,
    choose_models,
    list_models,
    make_client,
)
from server.compare.stats import ModelSummary, summarise

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_OUT = "compare-out"
PNG, REPORT, RESULTS = "compare.png", "report.md", "results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run an evaluation set through the running server for each model and chart median total "
        "time (prompt evaluation + generation) against answer quality."
    )
    parser.add_argument("--url", help=f"server base URL (default: $SLM_URL or {DEFAULT_URL})")
    parser.add_argument("--api-key", help="API key (default: $SLM_API_KEY or 'none')")
    parser.add_argument("--models", type=_model_list, help="comma-separated model ids (default: all listed)")
    parser.add_argument(
        "--eval", type=Path, metavar="FILE.jsonl", help="evaluation set (default: the built-in set)"
    )
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output folder ({DEFAULT_OUT})")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N items")
    parser.add_argument("--max-tokens", type=_positive_int, default=128, help="per answer (128)")
    parser.add_argument("--repeats", type=_positive_int, default=1, help="runs of each item (1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0)")
    parser.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed requests per model (1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")


def run(args: argparse.Namespace, progress: Progress | None = None) -> int:
    say = progress or _stderr
    try:
        return _run(args, say)
    except CompareError as exc:
        sys.stderr.write(f"slm-server compare: error: {exc.message}\n")
        return exc.exit_code


def _run(args: argparse.Namespace, say: Progress) -> int:
    eval_set = load_eval_set(args.eval).head(args.limit)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    url = args.url or os.environ.get("SLM_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("SLM_API_KEY") or "none"
    config = RunConfig(args.max_tokens, args.temperature, args.repeats, args.warmup)
    with make_client(url, api_key, args.timeout) as client:
        models = choose_models(list_models(client), args.models)
        say(f"comparing {', '.join(models)} on {len(eval_set.items)} item(s) of {eval_set.source}")
        runner = Runner(client, config, say)
        interrupted = False
        try:
            runner.run(models, eval_set.items)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: writing the partial results")
    meta = RunMeta(
        url, eval_set.source, eval_set.sha256, len(eval_set.items), config.max_tokens,
        config.temperature, config.repeats, config.warmup, interrupted,
    )  # fmt: skip
    summaries = [summarise(r.model, r.results) for r in runner.runs]
    write_outputs(out, meta, runner.runs, summaries, eval_set)
    for s in summaries:
        median = f"{s.total_ms.median / 1000:.2f} s" if s.total_ms else "-"
        say(f"{s.model}: quality {s.quality:.3f}, median total {median}, {s.ok}/{s.requests} ok")
    say(f"wrote {out / PNG}, {out / REPORT}, {out / RESULTS}")
    if interrupted:
        return 130
    return 1 if any(r.skipped or not any(x.error is None for x in r.results) for r in runner.runs) else 0


def write_outputs(
    out: Path, meta: RunMeta, runs: list[ModelRun], summaries: list[ModelSummary], eval_set: EvalSet
) -> None:
    name = eval_set.source.removeprefix("builtin:").rsplit("/", 1)[-1]
    title = f"Speed vs quality: {name}, {meta.items} items x {meta.repeats}, {meta.machine['cpu_count']} CPUs"
    save_png(plot_comparison(summaries, title), out / PNG, png_metadata(summaries, title))
    write_report_md(out / REPORT, meta, runs, summaries, eval_set.items, chart=PNG)
    write_results_json(out / RESULTS, results_document(meta, runs, summaries))


def _model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give at least one model id")
    return models


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative; got {text}")
    return value


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
