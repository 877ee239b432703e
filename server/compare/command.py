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
from server.compare.cost import apply_costs, build_price_book
from server.compare.errors import CompareError, UsageError
from server.compare.evalset import EvalSet, load_eval_set
from server.compare.judge import Judge
from server.compare.judging import PairRecord, judge_pairs, judge_singles
from server.compare.plot import plot_categories, plot_comparison, plot_cost, png_metadata, save_png
from server.compare.report import Extras, RunMeta, results_document, write_report_md, write_results_json
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
from server.errors import RegistryError
from server.registry import Registry, load_registry

PNG, COST_PNG, CATEGORIES_PNG = "compare.png", "cost.png", "categories.png"
REPORT, RESULTS = "report.md", "results.json"
DEFAULT_REGISTRY = Path("model_registry.yaml")
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
    if args.baseline and not args.judge:
        raise UsageError("--baseline needs --judge (the judge decides each pair)")
    registry = _registry(getattr(args, "registry", None))
    book = build_price_book(registry, cpu_hour=args.cpu_hour_price, gpu_hour=args.gpu_hour_price)
    judge: Judge | None = None
    pairs: list[PairRecord] = []
    with make_client(url, api_key, args.timeout) as client:
        available = list_models(client)
        models = choose_models(available, args.models)
        if args.baseline:
            models = choose_models(available, [*models, args.baseline])
        if args.judge:
            choose_models(available, [args.judge])  # a judge the server does not list stops here
            judge = Judge(client, args.judge, args.judge_max_tokens)
        say(f"comparing {', '.join(models)} on {len(eval_set.items)} item(s) of {eval_set.source}")
        runner = Runner(client, config, say)
        interrupted = False
        try:
            runner.run(models, eval_set.items)
            if judge is not None:
                items = {item.id: item for item in eval_set.items}
                judge_singles(judge, runner.runs, items, say)
                if args.baseline:
                    pairs = judge_pairs(judge, runner.runs, items, args.baseline, say)
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: writing the partial results")
    for model_run in runner.runs:
        apply_costs(book, model_run.results)
    if judge is not None:
        price = book.price(judge.model)
        usage = judge.usage
        usage.cost = price.request_cost(usage.prompt_tokens, usage.completion_tokens, usage.total_ms) if price else None
    meta = RunMeta(
        url, eval_set.source, eval_set.sha256, len(eval_set.items), config.max_tokens,
        config.temperature, config.repeats, config.warmup, interrupted,
    )  # fmt: skip
    summaries = [summarise(r.model, r.results) for r in runner.runs]
    extras = Extras(judge.usage if judge else None, args.baseline, pairs, book)
    written = write_outputs(out, meta, runner.runs, summaries, eval_set, extras)
    for s in summaries:
        median = f"{s.total_ms.median / 1000:.2f} s" if s.total_ms else "-"
        quality = "-" if s.quality is None else f"{s.quality:.3f}"
        judged = "" if s.judge_score is None else f", judge {s.judge_score:.2f}/10"
        cost = "" if s.cost_per_1000 is None else f", ${s.cost_per_1000:.4f} per 1,000 requests"
        say(f"{s.model}: quality {quality}{judged}, median total {median}{cost}, {s.ok}/{s.requests} ok")
    if judge is not None:
        u = judge.usage
        say(f"judge {u.model}: {u.requests} request(s), {u.total_ms / 1000:.1f} s, {u.missing} missing verdict(s)")
    say("wrote " + ", ".join(str(out / name) for name in written))
    if interrupted:
        return 130
    return 1 if any(r.skipped or not any(x.error is None for x in r.results) for r in runner.runs) else 0


def write_outputs(
    out: Path,
    meta: RunMeta,
    runs: list[ModelRun],
    summaries: list[ModelSummary],
    eval_set: EvalSet,
    extras: Extras | None = None,
) -> list[str]:
    """The charts, report.md and results.json; returns the names written."""
    extras = extras or Extras()
    judged = extras.judge is not None
    name = eval_set.source.removeprefix("builtin:").rsplit("/", 1)[-1]
    about = f"{name}, {meta.items} items x {meta.repeats}, {meta.machine['cpu_count']} CPUs"
    charts = [(PNG, "speed against quality", plot_comparison, f"Speed vs quality: {about}")]
    if any(s.cost_per_1000 is not None for s in summaries):
        charts.append((COST_PNG, "cost against quality", plot_cost, f"Cost vs quality: {about}"))
    if len({c for s in summaries for c in s.categories}) > 1:
        charts.append((CATEGORIES_PNG, "quality per category", plot_categories, f"Quality per category: {about}"))
    for file_name, _, plot, title in charts:
        fig = plot(summaries, title, judged)
        save_png(fig, out / file_name, png_metadata(summaries, title, fig))
    extras = Extras(extras.judge, extras.baseline, extras.pairs, extras.prices, [(c[0], c[1]) for c in charts])
    write_report_md(out / REPORT, meta, runs, summaries, eval_set.items, extras)
    write_results_json(out / RESULTS, results_document(meta, runs, summaries, extras))
    return [c[0] for c in charts] + [REPORT, RESULTS]


def _registry(path: Path | None) -> Registry | None:
    """The registry prices come from: the one named, else $SLM_REGISTRY, else ./model_registry.yaml if present."""
    if path is None:
        env = os.environ.get("SLM_REGISTRY")
        path = Path(env) if env else (DEFAULT_REGISTRY if DEFAULT_REGISTRY.is_file() else None)
    if path is None:
        return None
    try:
        return load_registry(path)
    except RegistryError as exc:
        raise UsageError(f"cannot read prices: {exc}") from None


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
