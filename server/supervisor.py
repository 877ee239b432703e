"""`slm-server serve`: everything on one machine.

Starts an embedded Redis (unless `SLM_REDIS_URL` names one), one worker process per replica of
every local model, and the gateway in this process. Crashed workers are restarted. Ctrl-C or
SIGTERM stops the gateway, then the workers (SIGTERM, then SIGKILL after a grace period), then Redis.

Signals may reach every process of the group at once (Ctrl-C in a terminal, `kill -- -PGID`,
systemd's control-group kill), so Redis and the workers can be gone before the gateway has even
begun to drain. The signal handler therefore marks the supervisor as stopping before anything
else: from then on nothing is started or restarted, and every child is gone within the grace
period counted from the signal (SIGKILL after it), whatever order they exit in.

Workers start with only the environment they need (`worker_environment`): never the API keys of
the gateway, nor any provider key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import uvicorn

from server.app import create_app
from server.embedded_redis import EmbeddedRedis
from server.errors import RegistryError
from server.http_server import GatewayServer
from server.queue import keys
from server.registry import Registry
from server.reload import diff
from server.residency.budget import format_size
from server.residency.manager import (
    ResidencyManager,
    budget_problems,
    check_budget,
    registry_costs,
)
from server.settings import Settings

log = logging.getLogger("slm.serve")

WORKER_GRACE_S = 30
RESTART_BACKOFF_MAX_S = 10.0
SWAP_READY_TIMEOUT_S = 300.0
EXIT_FLOOR_S = 5.0  # what a worker is given after SIGTERM at least, even when the grace period is spent

# The environment of a worker: these names and prefixes, plus every SLM_* setting except the
# gateway's client keys. Provider keys (registry `api_key_env`) are never SLM_* and never listed.
WORKER_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "SSL_CERT_FILE", "SSL_CERT_DIR", "COVERAGE_PROCESS_START",
})
WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "XDG_", "OMP_", "KMP_", "OPENBLAS_", "MKL_", "BLIS_", "GOMP_", "MALLOC_",
                       "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "GPU_", "VK_", "GGML_", "LLAMA_")
WORKER_ENV_WITHHELD = frozenset({"SLM_API_KEYS", "SLM_API_KEYS_FILE"})


def worker_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """What a worker inherits of `parent`: the allow-list above (settings are matched as pydantic
    reads them, ignoring case)."""
    kept = {}
    for name, value in parent.items():
        upper = name.upper()
        if upper.startswith("SLM_"):
            if upper not in WORKER_ENV_WITHHELD:
                kept[name] = value
        elif name in WORKER_ENV_NAMES or name.startswith(WORKER_ENV_PREFIXES):
            kept[name] = value
    return kept


@dataclass
class WorkerSlot:
    model: str
    index: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    retiring: bool = False  # draining after a registry edit: not restarted, dropped once it exits
    parked: bool = False  # its model is unloaded (on demand, idle, evicted): not started nor restarted


class Supervisor:
    def __init__(self, settings: Settings, registry: Registry, costs: dict[str, int] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        local = registry.local_models()
        models = [(name, entry.replicas) for name, entry in local.items()]
        self.residency = ResidencyManager(registry, settings.memory_budget_bytes(), costs or {}, self)
        self.boot_plan = self.residency.plan_boot_models(set(local))  # boot models that do not fit start parked
        self.slots = [WorkerSlot(name, i, parked=local[name].on_demand or name in self.boot_plan.deferred)
                      for i, name in enumerate(n for n, r in models for _ in range(r))]
        self.stopping = False
        self.stop_requested_at: float | None = None  # monotonic time of the first stop signal
        self._next_index = len(self.slots)
        self._transitions: set[asyncio.Task[None]] = set()

    # -- residency (server/residency/manager.py asks these) -----------------------------------------
    def pids(self, model: str) -> tuple[list[int], list[int]]:
        serving: list[int] = []
        stopping: list[int] = []
        for slot in self.slots:
            if slot.model == model and slot.process is not None and slot.process.poll() is None:
                (stopping if slot.parked or slot.retiring else serving).append(slot.process.pid)
        return serving, stopping

    def start_model(self, model: str) -> None:
        for slot in self.slots:
            if slot.model == model and slot.parked and not slot.retiring:
                slot.parked = False
                slot.restarts = 0
                if slot.process is None or slot.process.poll() is not None:
                    self.spawn(slot)

    def stop_model(self, model: str) -> None:
        """Drain the model's workers (SIGTERM: each finishes what it holds, then exits); not restarted."""
        for slot in self.slots:
            if slot.model == model and not slot.retiring:
                slot.parked = True
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.terminate()

    def _new_slots(self, model: str, count: int, *, parked: bool = False) -> list[WorkerSlot]:
        slots = [WorkerSlot(model, self._next_index + i, parked=parked) for i in range(count)]
        self._next_index += count
        self.slots.extend(slots)
        return slots

    def _retire(self, slots: list[WorkerSlot]) -> None:
        for slot in slots:
            slot.retiring = True
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()  # the worker finishes what it holds, then exits

    def request_stop(self) -> None:
        """Told to stop (from a signal handler: a flag and a time, nothing that could block)."""
        self.stopping = True
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()

    def apply_registry(self, old: Registry, new: Registry) -> None:
        """Registry edit: start workers for added models, drain removed ones, and for a changed
        model start new workers and drain the old ones once a new one is ready."""
        if self.stopping:
            return
        added, removed, changed = diff(old, new)
        self.registry = new
        local = new.local_models()
        try:
            costs = registry_costs(new, registry_dir=self.settings.registry.resolve().parent,
                                   model_dirs=self.settings.model_dir_list())
        except RegistryError as exc:  # the gateway's reload checked the files: only a race gets here
            log.error("residency: %s", exc)
            costs = {}
        self.residency.apply_registry(new, costs)
        for name in removed | (changed - set(local)):
            self._retire([s for s in self.slots if s.model == name and not s.retiring])
        deferred = self.residency.plan_boot_models(added & set(local)).deferred  # boot models past the budget wait
        for name in added & set(local):
            for slot in self._new_slots(name, local[name].replicas, parked=local[name].on_demand or name in deferred):
                self.spawn(slot)
        for name in changed & set(local):
            old_slots = [s for s in self.slots if s.model == name and not s.retiring]
            running = any(not s.parked for s in old_slots)
            if not running:  # unloaded: the new entry loads when it is next asked for (or now, at boot)
                self._retire(old_slots)
                for slot in self._new_slots(name, local[name].replicas, parked=local[name].on_demand):
                    self.spawn(slot)
                continue
            fresh = self._new_slots(name, local[name].replicas)
            for slot in fresh:
                self.spawn(slot)
            task = asyncio.get_running_loop().create_task(self._swap(name, old_slots, fresh))
            self._transitions.add(task)
            task.add_done_callback(self._transitions.discard)

    async def _swap(self, model: str, old: list[WorkerSlot], fresh: list[WorkerSlot]) -> None:
        client = self.settings.redis_target().async_client()
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
        env = worker_environment(os.environ)
        env["SLM_REDIS_URL"] = self.settings.redis_url or ""
        env["SLM_REGISTRY"] = str(self.settings.registry.resolve())
        # each worker gets its own health/metrics port, counting up from SLM_WORKER_PORT (0 = none)
        base = self.settings.worker_port
        env["SLM_WORKER_PORT"] = str(base + slot.index) if base else "0"
        env["SLM_SUPERVISOR_PID"] = str(os.getpid())
        env["SLM_WORKER_WATCH_REGISTRY"] = "0"  # in serve, registry edits are applied by the supervisor
        return env

    def spawn(self, slot: WorkerSlot) -> None:
        if self.stopping or slot.parked:
            return
        slot.process = subprocess.Popen(
            [sys.executable, "-m", "server", "worker", "--model", slot.model], env=self._env(slot)
        )
        slot.started_at = time.monotonic()
        self.residency.began_loading(slot.model)
        log.info("worker %s#%d started (pid %d)", slot.model, slot.index, slot.process.pid)

    async def watch(self) -> None:
        while not self.stopping:
            for slot in list(self.slots):
                proc = slot.process
                if slot.retiring and (proc is None or proc.poll() is not None):
                    self.slots.remove(slot)
                    continue
                if slot.parked:
                    if proc is not None and proc.poll() is not None:
                        log.info("worker %s#%d stopped (exit %s)", slot.model, slot.index, proc.returncode)
                        slot.process = None
                    continue
                if proc is None or proc.poll() is None or self.stopping:
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
        if not self.stopping and slot.process is None and not slot.parked:
            self.spawn(slot)

    def stop_workers(self) -> None:
        """SIGTERM every worker, SIGKILL those still there when the grace period (counted from the
        stop signal) is over."""
        self.request_stop()
        procs = [s.process for s in self.slots if s.process is not None and s.process.poll() is None]
        for proc in procs:
            proc.terminate()
        began = self.stop_requested_at if self.stop_requested_at is not None else time.monotonic()
        deadline = max(began + WORKER_GRACE_S, time.monotonic() + EXIT_FLOOR_S)
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


def absorb_reraised_signals(on_signal: Callable[[], None] | None = None) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if on_signal is not None:
            on_signal()  # first: whatever else happens, nothing is (re)started from here on
        _note_signal(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class SupervisedServer(GatewayServer):
    """The gateway of `serve`: uvicorn's own signal handler (installed while it serves) tells the
    supervisor first, so that it restarts nothing that exits during the drain."""

    def __init__(self, config: uvicorn.Config, supervisor: Supervisor) -> None:
        super().__init__(config)
        self.supervisor = supervisor

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.supervisor.request_stop()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn bounds its wait for connections but not the app's lifespan shutdown: bound the
        whole stop by the grace period counted from the signal, so the workers and Redis are
        still stopped in time if anything in it hangs."""
        began = self.supervisor.stop_requested_at or time.monotonic()
        budget = max(began + WORKER_GRACE_S + EXIT_FLOOR_S - time.monotonic(), EXIT_FLOOR_S)
        try:
            await asyncio.wait_for(super().shutdown(sockets), timeout=budget)
        except TimeoutError:
            log.error("the gateway did not stop within %.0f s; stopping the workers regardless", budget)


def serve(settings: Settings, registry: Registry) -> int:
    budget = settings.memory_budget_bytes()
    registry_dir, model_dirs = settings.registry.resolve().parent, settings.model_dir_list()
    try:
        costs = check_budget(registry, budget, registry_dir=registry_dir, model_dirs=model_dirs)
    except RegistryError as exc:
        log.error("invalid registry:\n%s", exc)
        return 1
    supervisor = Supervisor(settings, registry, costs)
    log.info("memory budget %s; estimated per model: %s", format_size(budget),
             ", ".join(f"{n} {format_size(c)}" for n, c in costs.items()) or "none")
    gateway: list[SupervisedServer] = []  # once built: a signal before uvicorn takes over stops it too

    def on_stop_signal() -> None:
        supervisor.request_stop()
        for server in gateway:
            server.should_exit = True

    absorb_reraised_signals(on_stop_signal)
    redis_server: EmbeddedRedis | None = None
    try:
        if not settings.redis_configured:
            redis_server = EmbeddedRedis()
            redis_server.start()
            settings = settings.model_copy(update={"redis_url": redis_server.url})
            supervisor.settings = settings
            log.info("embedded redis on %s", redis_server.url)
        for slot in supervisor.slots:
            supervisor.spawn(slot)
        app = create_app(settings, registry, on_reload=[supervisor.apply_registry],
                         reload_checks=[lambda new: budget_problems(new, budget, registry_dir, model_dirs)])
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                timeout_graceful_shutdown=WORKER_GRACE_S, access_log=False)
        server = SupervisedServer(config, supervisor)
        gateway.append(server)

        async def main() -> None:
            if supervisor.stopping:  # a signal came while starting: serve nothing
                return
            watcher = asyncio.create_task(supervisor.watch())
            resident = asyncio.create_task(supervisor.residency.run(settings.redis_target(),
                                                                    lambda: supervisor.stopping))
            try:
                await server.serve()
            finally:
                supervisor.request_stop()
                watcher.cancel()
                resident.cancel()

        log.info("serving on http://%s:%d/v1", settings.host, settings.port)
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop, as `uvicorn.run` would
            runner.run(main())
    finally:
        supervisor.stop_workers()
        if redis_server is not None:
            redis_server.stop()
    return 0
