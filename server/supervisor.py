"""`slm-server serve`: everything on one machine.

Starts an embedded Redis (unless `SLM_REDIS_URL` names one), one worker process per replica of
every local model, and the gateway in this process. Crashed workers are restarted. Ctrl-C or
SIGTERM stops the gateway, then the workers (SIGTERM, then SIGKILL after a grace period), then Redis.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import uvicorn

from server.app import create_app
from server.embedded_redis import EmbeddedRedis
from server.http_server import GatewayServer
from server.queue import keys
from server.registry import Registry
from server.reload import diff
from server.settings import Settings

log = logging.getLogger("slm.serve")

WORKER_GRACE_S = 30
RESTART_BACKOFF_MAX_S = 10.0
SWAP_READY_TIMEOUT_S = 300.0


@dataclass
class WorkerSlot:
    model: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    retiring: bool = False  # draining after a registry edit: not restarted, dropped once it exits


class Supervisor:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        models = [(name, entry.replicas) for name, entry in registry.local_models().items()]
        self.slots = [WorkerSlot(name, i) for i, name in enumerate(n for n, r in models for _ in range(r))]
        self.stopping = False
        self._next_index = len(self.slots)
        self._transitions: set[asyncio.Task[None]] = set()

    def _new_slots(self, model: str, count: int) -> list[WorkerSlot]:
        slots = [WorkerSlot(model, self._next_index + i) for i in range(count)]
        self._next_index += count
        self.slots.extend(slots)
        return slots

    def _retire(self, slots: list[WorkerSlot]) -> None:
        for slot in slots:
            slot.retiring = True
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()  # the worker finishes what it holds, then exits

    def apply_registry(self, old: Registry, new: Registry) -> None:
        """Registry edit: start workers for added models, drain removed ones, and for a changed
        model start new workers and drain the old ones once a new one is ready."""
        added, removed, changed = diff(old, new)
        self.registry = new
        local = new.local_models()
        for name in removed | (changed - set(local)):
            self._retire([s for s in self.slots if s.model == name and not s.retiring])
        for name in added & set(local):
            for slot in self._new_slots(name, local[name].replicas):
                self.spawn(slot)
        for name in changed & set(local):
            old_slots = [s for s in self.slots if s.model == name and not s.retiring]
            fresh = self._new_slots(name, local[name].replicas)
            for slot in fresh:
                self.spawn(slot)
            task = asyncio.get_running_loop().create_task(self._swap(name, old_slots, fresh))
            self._transitions.add(task)
            task.add_done_callback(self._transitions.discard)

    async def _swap(self, model: str, old: list[WorkerSlot], fresh: list[WorkerSlot]) -> None:
        client = redis.asyncio.Redis.from_url(self.settings.redis_url or "")
        try:
            deadline = time.monotonic() + SWAP_READY_TIMEOUT_S
            while time.monotonic() < deadline and not self.stopping:
                members: list[Any] = await client.zrangebyscore(keys.worker_heartbeats(model), time.time() - 5, "+inf")
                pids = {f"-{s.process.pid}-" for s in fresh if s.process is not None}
                if any(pid in m.decode() for m in members for pid in pids):
                    log.info("new %s worker ready; draining %d old worker(s)", model, len(old))
                    self._retire(old)
                    return
                await asyncio.sleep(0.5)
            log.error("no new %s worker became ready; the old ones keep serving", model)
            self._retire(fresh)
        finally:
            await client.aclose()

    def _env(self, slot: WorkerSlot) -> dict[str, str]:
        env = dict(os.environ)
        env["SLM_REDIS_URL"] = self.settings.redis_url or ""
        env["SLM_REGISTRY"] = str(self.settings.registry.resolve())
        # each worker gets its own health/metrics port, counting up from SLM_WORKER_PORT (0 = none)
        base = self.settings.worker_port
        env["SLM_WORKER_PORT"] = str(base + slot.index) if base else "0"
        env["SLM_SUPERVISOR_PID"] = str(os.getpid())
        env["SLM_WORKER_WATCH_REGISTRY"] = "0"  # in serve, registry edits are applied by the supervisor
        return env

    def spawn(self, slot: WorkerSlot) -> None:
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "server", "worker", "--model", slot.model], env=self._env(slot)
        )
        slot.started_at = time.monotonic()
        log.info("worker %s#%d started (pid %d)", slot.model, slot.index, slot.process.pid)

    async def watch(self) -> None:
        while not self.stopping:
            for slot in list(self.slots):
                proc = slot.process
                if slot.retiring and (proc is None or proc.poll() is not None):
                    self.slots.remove(slot)
                    continue
                if proc is None or proc.poll() is None:
                    continue
                wait = min(RESTART_BACKOFF_MAX_S, 0.5 * (2 ** min(slot.restarts, 5)))
                if time.monotonic() - slot.started_at > 60:
                    slot.restarts = 0
                    wait = 0.5
                log.warning("worker %s#%d exited with %s; restarting", slot.model, slot.index, proc.returncode)
                slot.restarts += 1
                slot.process = None
                asyncio.get_running_loop().call_later(wait, self._respawn, slot)
            await asyncio.sleep(0.5)

    def _respawn(self, slot: WorkerSlot) -> None:
        if not self.stopping and slot.process is None:
            self.spawn(slot)

    def stop_workers(self) -> None:
        self.stopping = True
        procs = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + WORKER_GRACE_S
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _note_signal(signum: int, _frame: object) -> None:
    # uvicorn handles SIGINT/SIGTERM while it runs and re-raises them once it has stopped; this
    # handler absorbs the re-raise so the workers and Redis are stopped below instead of orphaned.
    log.info("signal %d: stopping", signum)


def absorb_reraised_signals() -> None:
    signal.signal(signal.SIGTERM, _note_signal)
    signal.signal(signal.SIGINT, _note_signal)


def serve(settings: Settings, registry: Registry) -> int:
    absorb_reraised_signals()
    redis_server: EmbeddedRedis | None = None
    if not settings.redis_url:
        redis_server = EmbeddedRedis()
        redis_server.start()
        settings = settings.model_copy(update={"redis_url": redis_server.url})
        log.info("embedded redis on %s", redis_server.url)
    supervisor = Supervisor(settings, registry)
    try:
        for slot in supervisor.slots:
            supervisor.spawn(slot)
        app = create_app(settings, registry, on_reload=[supervisor.apply_registry])
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                timeout_graceful_shutdown=WORKER_GRACE_S, access_log=False)
        server = GatewayServer(config)

        async def main() -> None:
            watcher = asyncio.create_task(supervisor.watch())
            try:
                await server.serve()
            finally:
                supervisor.stopping = True
                watcher.cancel()

        log.info("serving on http://%s:%d/v1", settings.host, settings.port)
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop, as `uvicorn.run` would
            runner.run(main())
    finally:
        supervisor.stop_workers()
        if redis_server is not None:
            redis_server.stop()
    return 0
