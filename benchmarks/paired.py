"""The paired workloads of `make bench`: every contender runs every workload in each round, in an order
that rotates from round to round, and each figure is reported as a ratio to llama-server's in the same
round; the report gives the median over rounds (the host's drift hits both sides of each ratio alike).

Workloads (closed-loop streaming clients, temperature 0, `max_tokens` answers):

  short-c1, short-c4, short-c8  one short chat prompt (the same for every request, as a shared system
                                prompt would be), 1, 4 and 8 clients; short-c1's one client sends four
                                times the requests of the others' (a round's TTFT p50 over 4 samples
                                moved by 1-3 ms from run to run on a 10 ms figure)
  long-c4                       RAG-style: ~1,500-token prompts, each request its own document (no
                                prefix is shared), 4 clients
  mixed                         4 clients of short chats while one more client sends long prompts
                                (distinct) back to back; the short requests' latencies are reported
                                (what a long prompt arriving in between does to interactive users),
                                throughput over both

Per contender and round: TTFT p50/p99, inter-token p50/p99 (gaps between content chunks), completion
tokens/s, the server's CPU time per generated token (all its processes; for ours also the worker's
alone), and the server's own `timings.prompt_ms` p50 (prompt evaluation as the server measures it;
TTFT minus that is time spent outside the model).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.bench import percentile

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORDS = ("river", "market", "engine", "winter", "signal", "garden", "ledger", "harbor", "copper", "meadow",
         "lantern", "circuit", "orchard", "basalt", "quarry", "festival", "compass", "archive", "glacier",
         "pigeon", "timber", "velvet", "canyon", "saddle", "beacon", "thistle", "furnace", "island")


def long_prompt(number: int, words: int) -> str:
    """A deterministic pseudo-document of about `words` words, different for every `number` from its first
    token on (so no server can reuse another request's prompt cache), then a question about it."""
    rng = random.Random(number)
    sentences = []
    for i in range(words // 12):
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(11)).capitalize() + f" ({i}).")
    return (f"Document {number}. " + " ".join(sentences)
            + "\n\nIn one sentence, which word appears most often in the document above?")


@dataclass
class Sample:
    ttft_s: float | None
    itl_s: list[float]
    tokens: int
    prompt_ms: float | None
    error: str | None
    kind: str  # "short" | "long"


async def stream_one(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int,
                     kind: str) -> Sample:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first: float | None = None
    last: float | None = None
    gaps: list[float] = []
    tokens = 0
    prompt_ms: float | None = None
    try:
        async with client.stream("POST", url + "/chat/completions", json=body) as response:
            if response.status_code != 200:
                return Sample(None, [], 0, None, f"HTTP {response.status_code}", kind)
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                timings = chunk.get("timings")
                if isinstance(timings, dict) and isinstance(timings.get("prompt_ms"), int | float):
                    prompt_ms = float(timings["prompt_ms"])
                usage = chunk.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    tokens = usage["completion_tokens"]
                for choice in chunk.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        elif last is not None:
                            gaps.append(now - last)
                        last = now
            if not done:
                return Sample(None, [], 0, None, "no [DONE]", kind)
    except httpx.HTTPError as exc:
        return Sample(None, [], 0, None, type(exc).__name__, kind)
    return Sample(None if first is None else first - start, gaps, tokens, prompt_ms, None, kind)


SHORT_C1_FACTOR = 4  # short-c1's one client sends this many times the requests: as many samples as short-c4


@dataclass
class Workload:
    name: str
    short_clients: int
    short_requests_per_client: int
    long_clients: int
    long_requests_per_client: int  # 0: the long clients run until the short ones are done
    report_kind: str  # whose latencies the table shows


def workloads(requests_per_client: int, long_requests_per_client: int) -> list[Workload]:
    rpc, lrpc = requests_per_client, long_requests_per_client
    return [
        Workload("short-c1", 1, SHORT_C1_FACTOR * rpc, 0, 0, "short"),
        Workload("short-c4", 4, rpc, 0, 0, "short"),
        Workload("short-c8", 8, rpc, 0, 0, "short"),
        Workload("long-c4", 0, 0, 4, lrpc, "long"),
        Workload("mixed", 4, rpc, 1, 0, "short"),
    ]


async def run_workload(url: str, model: str, work: Workload, prompt: str, long_words: int, max_tokens: int,
                       numbers: list[int]) -> tuple[list[Sample], float]:
    """Run one workload against one server; `numbers` are the long prompts' document numbers, in order."""
    limits = httpx.Limits(max_connections=work.short_clients + work.long_clients + 1)
    samples: list[Sample] = []
    pool = list(numbers)
    shorts_done = asyncio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        async def short_client() -> None:
            for _ in range(work.short_requests_per_client):
                samples.append(await stream_one(client, url, model, prompt, max_tokens, "short"))

        async def long_client() -> None:
            count = 0
            while pool and ((work.long_requests_per_client == 0 and not shorts_done.is_set())
                            or count < work.long_requests_per_client):
                count += 1
                samples.append(await stream_one(client, url, model, long_prompt(pool.pop(0), long_words),
                                                max_tokens, "long"))

        async def shorts() -> None:
            await asyncio.gather(*(short_client() for _ in range(work.short_clients)))
            shorts_done.set()

        start = time.perf_counter()
        await asyncio.gather(shorts(), *(long_client() for _ in range(work.long_clients)))
        return samples, time.perf_counter() - start


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def group_pids(leader: int, match: str | None = None) -> list[int]:
    """The processes of `leader`'s session (a contender started in its own), those whose command line
    holds `match` when given."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != leader:
                continue
            if match is not None and match not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
        except (OSError, ValueError):
            continue
        found.append(int(entry.name))
    return found


@dataclass
class Server:
    url: str
    leader: int  # the session leader's pid: every process of the contender
    worker_match: str | None = None  # a command-line fragment that picks its model worker (ours)
    metrics_url: str | None = None  # ours with SLM_TRACE_STAGES: the TTFT stage histogram is read from here
    worker_metrics_url: str | None = None  # ours with SLM_TRACE_STEPS: its worker's step phases


STAGE_SERIES = re.compile(r'slm_ttft_stage_seconds_(sum|count)\{model="[^"]*",stage="([^"]+)"\} (\S+)')
STEP_SERIES = re.compile(r'slm_worker_step_seconds_(sum|count)\{model="[^"]*",phase="([^"]+)"\} (\S+)')


def histogram_totals(metrics_url: str, series: re.Pattern[str] = STAGE_SERIES) -> dict[str, tuple[float, float]]:
    """Per label of a histogram (`series`: the TTFT stages, or STEP_SERIES: the step phases): (sum of seconds,
    count) from a /metrics page."""
    found: dict[str, dict[str, float]] = {}
    for match in series.finditer(httpx.get(metrics_url, timeout=10).text):
        found.setdefault(match.group(2), {})[match.group(1)] = float(match.group(3))
    return {stage: (v.get("sum", 0.0), v.get("count", 0.0)) for stage, v in found.items()}


def histogram_means_ms(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
                   ) -> dict[str, float]:
    means = {}
    for stage, (total, count) in after.items():
        total0, count0 = before.get(stage, (0.0, 0.0))
        if count > count0:
            means[stage] = round((total - total0) / (count - count0) * 1000.0, 3)
    return means


def summarise(samples: list[Sample], kind: str, duration_s: float, cpu_s: float, worker_cpu_s: float | None
              ) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    shown = [s for s in ok if s.kind == kind]
    tokens = sum(s.tokens for s in ok)

    def ms(values: list[float], q: float) -> float | None:
        value = percentile(values, q)
        return None if value is None else round(value * 1000.0, 2)

    ttft = [s.ttft_s for s in shown if s.ttft_s is not None]
    gaps = [g for s in shown for g in s.itl_s]
    prompt = [s.prompt_ms / 1000.0 for s in shown if s.prompt_ms is not None]
    return {
        "requests": len(samples), "errors": len(samples) - len(ok), "shown": len(shown),
        "tokens": tokens, "duration_s": round(duration_s, 3),
        "tokens_per_s": round(tokens / duration_s, 2) if duration_s else None,
        "ttft_p50": ms(ttft, 50), "ttft_p99": ms(ttft, 99), "itl_p50": ms(gaps, 50), "itl_p99": ms(gaps, 99),
        "prompt_ms_p50": ms(prompt, 50),
        "cpu_ms_per_token": round(cpu_s * 1000.0 / tokens, 3) if tokens else None,
        "worker_cpu_ms_per_token": (round(worker_cpu_s * 1000.0 / tokens, 3) if tokens and worker_cpu_s is not None
                                    else None),
    }


def measure(server: Server, model: str, work: Workload, prompt: str, long_words: int, max_tokens: int,
            numbers: list[int]) -> dict[str, Any]:
    pids = group_pids(server.leader)
    workers = group_pids(server.leader, server.worker_match) if server.worker_match else None
    stages0 = histogram_totals(server.metrics_url) if server.metrics_url else None
    steps0 = histogram_totals(server.worker_metrics_url, STEP_SERIES) if server.worker_metrics_url else None
    cpu0 = cpu_seconds(pids)
    worker0 = cpu_seconds(workers) if workers is not None else None
    samples, duration = asyncio.run(run_workload(server.url, model, work, prompt, long_words, max_tokens, numbers))
    cpu = cpu_seconds(pids) - cpu0
    worker_cpu = cpu_seconds(workers) - worker0 if workers is not None and worker0 is not None else None
    figures = summarise(samples, work.report_kind, duration, cpu, worker_cpu)
    if server.metrics_url and stages0 is not None:  # all requests' stages (mixed: short and long together)
        figures["stages_ms"] = histogram_means_ms(stages0, histogram_totals(server.metrics_url))
    if server.worker_metrics_url and steps0 is not None:  # the decode loop's phases, per step
        figures["steps_ms"] = histogram_means_ms(steps0, histogram_totals(server.worker_metrics_url, STEP_SERIES))
    return figures


METRICS = ("tokens_per_s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "cpu_ms_per_token", "prompt_ms_p50")


def run_rounds(servers: dict[str, Server], model: str, rounds: int, plan: list[Workload], prompt: str,
               long_words: int, max_tokens: int, say: Callable[[str], None]) -> dict[str, Any]:
    """`rounds` rounds; in each, every workload on every server, the servers' order rotating per round.
    Long prompts get fresh document numbers per round, the same for every server within it."""
    names = list(servers)
    out: dict[str, Any] = {w.name: {name: [] for name in names} for w in plan}
    counter = 0
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for work in plan:
            wanted = work.long_clients * (work.long_requests_per_client or 64)
            numbers = list(range(counter, counter + wanted))
            counter += wanted
            for name in order:
                figures = measure(servers[name], model, work, prompt, long_words, max_tokens, numbers)
                figures["round"] = r
                out[work.name][name].append(figures)
                say(f"round {r + 1}/{rounds} {work.name} {name}: {figures['tokens_per_s']} tok/s, TTFT p50 "
                    f"{figures['ttft_p50']} ms, ITL p99 {figures['itl_p99']} ms, errors {figures['errors']}")
    return out


def ratios(per_round: dict[str, list[dict[str, Any]]], ours: str, peer: str) -> dict[str, float | None]:
    """Median over rounds of ours / peer for each metric (the two measured in the same round)."""
    result: dict[str, float | None] = {}
    for metric in METRICS:
        values = [a[metric] / b[metric] for a, b in zip(per_round[ours], per_round[peer], strict=True)
                  if a[metric] is not None and b[metric]]
        result[metric] = round(statistics.median(values), 3) if values else None
    return result


def medians(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for metric in (*METRICS, "worker_cpu_ms_per_token"):
        values = [row[metric] for row in rows if row.get(metric) is not None]
        result[metric] = round(statistics.median(values), 2) if values else None
    result["errors"] = sum(row["errors"] for row in rows)
    return result
