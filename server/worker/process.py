"""`slm-server worker --model NAME`: load one GGUF model and serve its queue until told to stop.

SIGTERM/SIGINT: stop taking work, finish what is held, deregister, exit 0.
With `SLM_WORKER_PORT` set, a small HTTP server answers /health (the loop is beating),
/ready (model loaded and Redis reachable) and /metrics (slot and load metrics).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.engine.batch_engine import BatchEngine
from server.engine.embedder import Embedder
from server.engine.llama_model import LlamaModel, ModelOptions
from server.errors import RegistryError
from server.registry import LocalModel, load_registry, resolve_gguf
from server.reload import file_digest
from server.residency.measure import process_rss
from server.settings import Settings
from server.worker.step_timer import StepTimer
from server.worker.worker import Worker, WorkerConfig

log = logging.getLogger("slm.worker")

# a step of a small model on a CPU takes milliseconds, its phases around it tens of microseconds
STEP_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.002, 0.003, 0.005, 0.0075,
                0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0, 5.0)


class WorkerMetrics:
    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.busy = Gauge("slm_worker_busy_slots", "Sequences being decoded.", ["model"], registry=self.registry)
        self.slots = Gauge("slm_worker_slots", "Sequences a worker can decode together.", ["model"],
                           registry=self.registry)
        self.load = Histogram("slm_model_load_seconds", "Time to load the model.", ["model"],
                              buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=self.registry)
        self.kv_usage = Gauge("slm_worker_kv_cache_usage_ratio", "Share of the worker's KV cache cells in use, "
                              "from llama.cpp's positions per sequence (kept prefixes included).", ["model"],
                              registry=self.registry)
        self.rss = Gauge("slm_worker_resident_memory_bytes", "The worker's resident memory (RSS).", ["model"],
                         registry=self.registry)
        self.steps = Histogram("slm_worker_step_seconds", "The decode loop's time per step, phase by phase "
                               "(SLM_TRACE_STEPS; server/worker/step_timer.py).", ["model", "phase"],
                               buckets=STEP_BUCKETS, registry=self.registry)
        self.model = model
        self._step_phases: dict[str, Any] = {}  # each phase's series, looked up once (the trace runs per step)

    def observe_step(self, phase: str, seconds: float) -> None:
        series = self._step_phases.get(phase)
        if series is None:
            series = self._step_phases[phase] = self.steps.labels(self.model, phase)
        series.observe(seconds)


def _serve_http(port: int, host: str, worker: Worker, metrics: WorkerMetrics) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                metrics.busy.labels(metrics.model).set(worker.engine.active())
                metrics.kv_usage.labels(metrics.model).set(worker.engine.kv_usage())
                metrics.rss.labels(metrics.model).set(process_rss())
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/health":
                alive = time.monotonic() - worker.last_tick < 30
                self._send(200 if alive else 503, b'{"status":"ok"}' if alive else b'{"status":"stuck"}')
            elif self.path == "/ready":
                ok = worker.ready and not worker.stopping
                self._send(200 if ok else 503, b'{"status":"ready"}' if ok else b'{"status":"unavailable"}')
            else:
                self._send(404, b'{"error":"not found"}')

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()
    return server


def _entry_watch(settings: Settings, model: str, entry: LocalModel) -> Callable[[], bool]:
    """A check that says when this worker's entry in the registry file changed (distributed mode)."""
    seen = [file_digest(settings.registry)]

    def changed() -> bool:
        digest = file_digest(settings.registry)
        if digest is None or digest == seen[0]:
            return False
        seen[0] = digest
        try:
            new = load_registry(settings.registry)
        except RegistryError as exc:
            log.error("ignoring an invalid registry edit:\n%s", exc)
            return False
        return new.models.get(model) != entry

    return changed


def _exit_while_starting(signum: int, _frame: FrameType | None) -> None:
    log.info("signal %d while starting: exiting", signum)
    raise SystemExit(0)  # nothing is held yet; Ctrl-C gives no KeyboardInterrupt traceback


def run_worker(settings: Settings, model: str) -> int:
    signal.signal(signal.SIGTERM, _exit_while_starting)
    signal.signal(signal.SIGINT, _exit_while_starting)
    try:
        registry = load_registry(settings.registry)
    except RegistryError as exc:
        log.error("%s", exc)
        return 2
    entry = registry.models.get(model)
    if not isinstance(entry, LocalModel):
        log.error("model '%s' is not a local model in %s", model, settings.registry)
        return 2
    try:
        path = resolve_gguf(entry.gguf, registry_dir=settings.registry.resolve().parent,
                            model_dirs=settings.model_dir_list())
    except RegistryError as exc:
        log.error("models.%s.%s", model, exc)
        return 2
    metrics = WorkerMetrics(model)
    started = time.perf_counter()
    llama = LlamaModel(path, ModelOptions(n_ctx=entry.n_ctx, parallel=entry.parallel, n_threads=entry.n_threads,
                                          n_batch=entry.n_batch, n_gpu_layers=entry.n_gpu_layers,
                                          prefill_chunk=entry.prefill_chunk,
                                          persistent_threads=entry.persistent_threads, poll=entry.poll))
    engine = BatchEngine(llama)
    metrics.load.labels(model).observe(time.perf_counter() - started)
    metrics.slots.labels(model).set(entry.parallel)
    log.info("model %s loaded from %s in %.2fs (parallel=%d)", model, path.name,
             time.perf_counter() - started, entry.parallel)
    # no automatic retry: a transaction whose reply was lost may have run, and sending it again would
    # duplicate its tokens; the worker's own loops reconnect (and redelivery covers what it held)
    client = settings.redis_target().sync_client(
        retry=Retry(NoBackoff(), 0),
        socket_timeout=max(settings.redis_timeout_s, 0.5) + 1.0,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    worker_embedder = Embedder(llama) if entry.embeddings else None
    worker = Worker(engine, client, WorkerConfig(
        model=model, lease_s=settings.lease_s, max_deliveries=settings.max_deliveries,
        heartbeat_s=settings.heartbeat_s, heartbeat_ttl_s=settings.heartbeat_ttl_s, model_file=path.name,
        log_prompts=settings.log_prompts, dlq_maxlen=settings.dlq_maxlen, dlq_ttl_s=settings.dlq_ttl_s,
        fair=settings.queue_policy == "fair", starvation_s=settings.queue_starvation_s,
        crash_marker=os.environ.get("SLM_TEST_CRASH_MARKER", ""),
    ))

    supervisor = int(os.environ.get("SLM_SUPERVISOR_PID", "0"))
    if supervisor:
        worker.orphan_check = lambda: os.getppid() != supervisor

    worker.embedder = worker_embedder
    if settings.trace_steps:
        worker.step_timer = StepTimer(metrics.observe_step)
    if os.environ.get("SLM_WORKER_WATCH_REGISTRY", "1") != "0":
        worker.entry_changed = _entry_watch(settings, model, entry)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing %d request(s), taking no more", signum, len(worker.active))
        worker.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    http = _serve_http(settings.worker_port, settings.host, worker, metrics) if settings.worker_port else None
    gc.collect()
    gc.freeze()  # what loading made is never scanned by the collector again: no long pause in the decode loop
    try:
        worker.run()
    finally:
        if http is not None:
            http.shutdown()
        if worker_embedder is not None:
            worker_embedder.close()
        engine.close()
        client.close()
    return 0
