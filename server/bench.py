"""`slm-server bench`: a closed-loop load generator against any OpenAI-compatible server.

`concurrency` clients each send a streaming chat completion (temperature 0) and send the next one
as soon as the previous one has ended, until `requests` requests have been sent in all. Per request
the client clock gives:

- TTFT: request sent -> first chunk carrying content;
- inter-token latencies: the gaps between consecutive content chunks (a server that coalesces several
  tokens into one chunk shows fewer, longer gaps: compare `content_chunks` with `completion_tokens`);
- end-to-end: request sent -> end of the stream;
- completion tokens: from the usage chunk when the server sends one (`stream_options.include_usage`
  is always asked for), else the number of content chunks.

Aggregates over the whole run: completion tokens/s and requests/s (over the wall time from the
first request to the last answer), TTFT / ITL / end-to-end p50, p90, p99 over successful requests,
and errors by kind. A failed request (an HTTP error status, an error frame in the stream, a stream
that ends without `[DONE]`, a transport error or a timeout) is counted under `errors`, never raised.

`run(args)` prints one JSON line on stdout; exit code 0 when every request succeeded, 1 when some
failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "default"
DEFAULT_PROMPT = "Write a short story about a robot who learns to paint. Describe the colours it discovers."
PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """What the client saw of one request. Times in seconds; `error` is None on success."""

    e2e_s: float
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    content_chunks: int = 0
    usage_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def completion_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.content_chunks


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default); None if empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99 and mean of durations given in seconds, reported in milliseconds (None when no samples)."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        value = percentile(values_s, q)
        out[f"p{q}"] = None if value is None else round(value * 1000, 3)
    out["mean"] = round(sum(values_s) / len(values_s) * 1000, 3) if values_s else None
    return out


def summarise(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Aggregate the per-request results of one run that took `duration_s` of wall time."""
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)

    def rate(n: int) -> float:
        return round(n / duration_s, 3) if duration_s > 0 else 0.0

    return {
        "requests": len(results),
        "completed": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": dict(Counter(r.error for r in results if r.error is not None)),
        "duration_s": round(duration_s, 4),
        "completion_tokens": tokens,
        "content_chunks": sum(r.content_chunks for r in ok),
        "completion_tokens_per_s": rate(tokens),
        "requests_per_s": rate(len(ok)),
        "ttft_ms": distribution_ms([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itl_s]),
        "e2e_ms": distribution_ms([r.e2e_s for r in ok]),
        "usage_reported": bool(ok) and all(r.usage_tokens is not None for r in ok),
    }


def _error_text(status: int, body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return f"HTTP {status}" + (f": {str(message)[:120]}" if message else "")


async def _one_request(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> RequestResult:
    result = RequestResult(e2e_s=0.0)
    start = time.perf_counter()
    last: float | None = None
    done = False
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code >= 400:
                result.error = _error_text(response.status_code, await response.aread())
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        continue
                    error = chunk.get("error")
                    if error is not None:
                        message = error.get("message", "") if isinstance(error, dict) else error
                        result.error = f"stream error: {str(message)[:120]}"
                        continue
                    usage = chunk.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        result.usage_tokens = usage["completion_tokens"]
                    for choice in chunk.get("choices") or ():
                        if (choice.get("delta") or {}).get("content"):
                            now = time.perf_counter()
                            if last is None:
                                result.ttft_s = now - start
                            else:
                                result.itl_s.append(now - last)
                            last = now
                            result.content_chunks += 1
                if result.error is None and not done:
                    result.error = "stream ended without [DONE]"
    except httpx.TimeoutException:
        result.error = "timeout"
    except httpx.HTTPError as exc:
        result.error = f"transport: {type(exc).__name__}"
    except (ValueError, AttributeError) as exc:
        result.error = f"malformed stream: {type(exc).__name__}"
    result.e2e_s = time.perf_counter() - start
    return result


async def run_bench_async(
    url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    prompt: str,
    api_key: str | None = None,
    *,
    timeout_s: float = 300.0,
    warmup: int = 0,
    distinct_prompts: bool = False,
) -> dict[str, Any]:
    """Run the load and return the summary (see the module docstring) plus the run's parameters.
    With `distinct_prompts` every request's prompt starts with its own number, so no server can
    answer from a cache of the previous request's prompt."""
    if concurrency < 1 or requests < 1 or max_tokens < 1 or warmup < 0:
        raise ValueError("concurrency, requests and max_tokens must be >= 1, warmup >= 0")
    endpoint = url.rstrip("/") + "/chat/completions"
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    results: list[RequestResult] = []
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        for _ in range(warmup):
            await _one_request(client, endpoint, payload)
        remaining = requests

        async def closed_loop_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                body = payload
                if distinct_prompts:
                    body = {**payload, "messages": [{"role": "user", "content": distinct_prompt(remaining, prompt)}]}
                results.append(await _one_request(client, endpoint, body))

        start = time.perf_counter()
        await asyncio.gather(*(closed_loop_client() for _ in range(min(concurrency, requests))))
        duration = time.perf_counter() - start
    summary = summarise(results, duration)
    return {"url": url, "model": model, "concurrency": concurrency, "max_tokens": max_tokens, **summary}


def run_bench(
    url: str,
    model: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
    prompt: str,
    api_key: str | None = None,
    *,
    timeout_s: float = 300.0,
    warmup: int = 0,
    distinct_prompts: bool = False,
) -> dict[str, Any]:
    """Blocking face of `run_bench_async` (starts its own event loop)."""
    return asyncio.run(run_bench_async(url, model, concurrency, requests, max_tokens, prompt, api_key,
                                       timeout_s=timeout_s, warmup=warmup, distinct_prompts=distinct_prompts))


def distinct_prompt(number: int, prompt: str) -> str:
    return f"Request {number}. {prompt}"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Closed-loop load against any OpenAI-compatible server: streaming chat completions at "
        "temperature 0; prints one JSON line (tokens/s, requests/s, TTFT / ITL / e2e p50 p90 p99, errors)."
    )
    parser.add_argument("--url", help=f"server base URL (default: $SLM_URL or {DEFAULT_URL})")
    parser.add_argument("--api-key", help="API key (default: $SLM_API_KEY, else no Authorization header)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name to send ({DEFAULT_MODEL})")
    parser.add_argument("--concurrency", type=_positive_int, default=1, help="clients in the closed loop (1)")
    parser.add_argument("--requests", type=_positive_int, default=16, help="requests in all (16)")
    parser.add_argument("--max-tokens", type=_positive_int, default=64, help="per answer (64)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message every request sends")
    parser.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed requests first (1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("SLM_URL") or DEFAULT_URL
    api_key = args.api_key or os.environ.get("SLM_API_KEY")
    try:
        summary = run_bench(url, args.model, args.concurrency, args.requests, args.max_tokens, args.prompt,
                            api_key, timeout_s=args.timeout, warmup=args.warmup)
    except ValueError as exc:
        sys.stderr.write(f"slm-server bench: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("slm-server bench: interrupted\n")
        return 130
    sys.stdout.write(json.dumps(summary, separators=(",", ":")) + "\n")
    return 0 if summary["errors"] == 0 else 1
