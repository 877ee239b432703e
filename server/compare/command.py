"""`slm-server compare`: the command-line face. `add_arguments(parser)` then `run(args)` -> exit code.

Exit codes: 0 all models measured; 1 a model could not be measured (outputs still written) or the
server cannot be reached; 2 bad usage or a malformed eval file; 130 interrupted (partial outputs).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from server.compare.arguments import DEFAULT_URL, add_arguments
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

PNG, REPORT, RESULTS = "compare.png", "report.md", "results.json"
__all__ = ["add_arguments", "run", "write_outputs"]


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


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
