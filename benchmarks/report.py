"""`make bench`'s report: the paired workloads as ratios to llama-server (medians over rounds), the raw
medians of each side, our TTFT stage breakdown, and the queue-hop figure."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.paired import SHORT_C1_FACTOR, medians, ratios
from server.bench import percentile
from server.serving.stages import STAGES
from server.worker.step_timer import PHASES

OURS, PEER = "ours", "llama_server"
LABELS = {
    "inprocess": "llama-cpp-python in-process, no server",
    "ours": "slm-server (this repo, `serve`, parallel 8)",
    "llama_cpp_server": "llama-cpp-python's server (`python -m llama_cpp.server`)",
    "llama_server": "llama.cpp `llama-server --parallel 8`",
    "baseline": "slm-server from BENCH_BASELINE_TREE (before)",
}
# the goals, per workload: throughput >= 1.0x, TTFT p50 <= 1.0x, inter-token p99 <= 1.2x
GOALS = {"tokens_per_s": (">=", 1.0), "ttft_p50": ("<=", 1.0), "itl_p99": ("<=", 1.2)}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def paired_summary(rounds: dict[str, Any]) -> dict[str, Any]:
    """Per workload: each side's medians over rounds, the median per-round ratio ours / llama-server, the
    goals met or not, and our stage means (median over rounds)."""
    out: dict[str, Any] = {}
    for workload, per_side in rounds.items():
        entry: dict[str, Any] = {"medians": {side: medians(rows) for side, rows in per_side.items()}}
        if OURS in per_side and PEER in per_side:
            entry["ratios"] = ratio = ratios(per_side, OURS, PEER)
            entry["goals"] = {metric: (ratio[metric] is not None
                                       and (ratio[metric] >= bound if op == ">=" else ratio[metric] <= bound))
                              for metric, (op, bound) in GOALS.items()}
        if "baseline" in per_side and PEER in per_side:
            entry["baseline_ratios"] = ratios(per_side, "baseline", PEER)
        stages = [row["stages_ms"] for row in per_side.get(OURS, []) if row.get("stages_ms")]
        if stages:
            entry["stages_ms"] = {stage: round(statistics.median(s.get(stage, 0.0) for s in stages), 2)
                                  for stage in STAGES}
        for side in (OURS, "baseline"):
            steps = [row["steps_ms"] for row in per_side.get(side, []) if row.get("steps_ms")]
            if steps:
                entry.setdefault("steps_ms", {})[side] = {
                    phase: round(statistics.median(s.get(phase, 0.0) for s in steps), 3) for phase in PHASES}
        out[workload] = entry
    return out


def overhead(servers: dict[str, Any]) -> dict[str, Any]:
    """The queue-hop figure: each server's one-token request minus the in-process one of the same round."""
    base = (servers.get("inprocess") or {}).get("one_token_e2e_ms")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for key, label in LABELS.items():
        entry = servers.get(key) or {}
        if "hop_failed" in entry:
            notes.append(f"queue hop, {label}: {entry['hop_failed'].splitlines()[0]}")
        e2e = entry.get("one_token_e2e_ms")
        if not e2e:
            continue
        row = {"key": key, "label": label, "p50": percentile(e2e, 50), "p99": percentile(e2e, 99),
               "added_p50": None, "added_p99": None}
        if base and key != "inprocess":
            added = [x - y for x, y in zip(e2e, base, strict=False)]  # the same round's in-process request
            row.update(added_p50=percentile(added, 50), added_p99=percentile(added, 99))
        rows.append(row)
    return {"rows": rows, "notes": notes}


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    summary = results["summary"]
    lines = [
        "# Benchmark: slm-server against llama.cpp's llama-server (and llama-cpp-python)",
        "",
        f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['machine']}), load average before "
        f"{meta['loadavg_before']}, after {meta['loadavg_after']}. Model {meta['model']}, {meta['threads']} "
        f"threads, {meta['max_tokens']} max tokens, temperature 0, streaming, closed-loop clients; "
        f"{meta['rounds']} rounds, the contenders' order rotating per round; {meta['requests_per_client']} "
        f"requests per short-chat client ({SHORT_C1_FACTOR * meta['requests_per_client']} for short-c1's one), "
        f"{meta['long_requests_per_client']} per long-prompt client "
        f"(~{meta['long_words']} words, each its own document). llama-cpp-python {meta['llama_cpp_python']}.",
    ]
    for side, entry in results["servers"].items():
        if "skipped" in entry or "failed" in entry:
            lines.append(f"\n{LABELS.get(side, side)}: {(entry.get('skipped') or entry['failed']).splitlines()[0]}")
    lines += ["", "## Ours / llama-server (median of the per-round ratios)", "",
              "Throughput above 1 is better; the latencies and CPU below 1 are better. Goals: throughput >= 1.0, "
              "TTFT p50 <= 1.0, inter-token p99 <= 1.2.", "",
              "| workload | tokens/s | TTFT p50 | TTFT p99 | inter-token p50 | inter-token p99 | CPU per token "
              "| goals met |", "|---|---|---|---|---|---|---|---|"]
    for workload, entry in summary.items():
        ratio = entry.get("ratios")
        if not ratio:
            continue
        goals = entry["goals"]
        met = "all" if all(goals.values()) else "not " + ", ".join(k for k, v in goals.items() if not v)
        lines.append(f"| {workload} | " + " | ".join(_fmt(ratio[m], 2) for m in (
            "tokens_per_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "cpu_ms_per_token")) + f" | {met} |")
        before = entry.get("baseline_ratios")
        if before:
            lines.append(f"| {workload}, before (baseline) | " + " | ".join(_fmt(before[m], 2) for m in (
                "tokens_per_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "cpu_ms_per_token")) + " | |")
    lines += ["", "## Raw figures (medians over rounds; milliseconds)", "",
              "| workload | server | tokens/s | TTFT p50 / p99 | inter-token p50 / p99 | server prompt_ms p50 "
              "| CPU ms per token (worker) | errors |", "|---|---|---|---|---|---|---|---|"]
    for workload, entry in summary.items():
        for side, m in entry["medians"].items():
            worker = f" ({_fmt(m['worker_cpu_ms_per_token'], 2)})" if m.get("worker_cpu_ms_per_token") else ""
            lines.append(f"| {workload} | {LABELS.get(side, side)} | {_fmt(m['tokens_per_s'], 1)} "
                         f"| {_fmt(m['ttft_p50'])} / {_fmt(m['ttft_p99'])} | {_fmt(m['itl_p50'], 1)} / "
                         f"{_fmt(m['itl_p99'], 1)} | {_fmt(m['prompt_ms_p50'])} "
                         f"| {_fmt(m['cpu_ms_per_token'], 2)}{worker} | {m['errors']} |")
    staged = {w: e["stages_ms"] for w, e in summary.items() if e.get("stages_ms")}
    if staged:
        lines += ["", "## Where our time to first token went (SLM_TRACE_STAGES; mean ms per request, median "
                      "over rounds; every request of the workload)", "",
                  "| workload | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
        for workload, stages in staged.items():
            lines.append(f"| {workload} | " + " | ".join(_fmt(stages[s], 1) for s in STAGES) + " |")
    stepped = {w: e["steps_ms"] for w, e in summary.items() if e.get("steps_ms")}
    if stepped:
        lines += ["", "## Where our decode loop's time per step went (SLM_TRACE_STEPS; mean ms per step, median "
                      "over rounds)", "",
                  "`emit` is the write of a step's events in wall time, `emit_cpu` the decode thread's own CPU in "
                  "it (the rest: processes the write woke, run on its core first); `between` is the loop from "
                  "one step's events to the next step (`server/worker/step_timer.py`).", "",
                  "| workload | server | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
        for workload, sides in stepped.items():
            for side, phases in sides.items():
                lines.append(f"| {workload} | {LABELS.get(side, side)} | "
                             + " | ".join(_fmt(phases[p], 3) for p in PHASES) + " |")
    hop = results.get("overhead") or {}
    if hop.get("rows"):
        lines += ["", f"## Queue hop: a 1-token answer at concurrency 1, {meta['overhead_requests']} rounds", "",
                  "Each round every side answers the same new prompt, in an order rotating per round; 'added' is "
                  "each request minus the in-process request of the same round.", "",
                  "| server | e2e p50 ms | e2e p99 ms | added p50 ms | added p99 ms |", "|---|---|---|---|---|"]
        for row in hop["rows"]:
            lines.append(f"| {row['label']} | {_fmt(row['p50'], 1)} | {_fmt(row['p99'], 1)} | "
                         f"{_fmt(row['added_p50'], 1)} | {_fmt(row['added_p99'], 1)} |")
        lines += [f"- {note}" for note in hop["notes"]]
    return "\n".join(lines) + "\n"
