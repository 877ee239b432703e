"""Helpers of the live residency tests: three random GGUFs of different sizes, a budget that fits two,
and a sampler of what `serve` holds (its published residency, its worker processes and their RSS)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis

from server.queue import keys
from server.residency.state import decode_all
from tests.conftest import LiveServer, child_pids, running

from .random_gguf import Dims, write_random_gguf

SIZES = {"m1": Dims(n_embd=64, n_layer=2), "m2": Dims(n_embd=96, n_layer=3, n_ff=192),
         "m3": Dims(n_embd=128, n_layer=2, n_ff=256)}
ENTRY = "    gguf: {file}\n    n_ctx: 256\n    n_threads: 1\n    parallel: 1\n    load: {load}\n"


def write_models(directory: Path) -> None:
    for seed, (name, dims) in enumerate(SIZES.items()):
        write_random_gguf(directory / f"{name}.gguf", dims, seed=seed)


def registry(extra: dict[str, str] | None = None, load: str = "on_demand") -> str:
    """The three models, on demand (or `load`); `extra`: more YAML lines per model."""
    lines = ["models:"]
    for name in SIZES:
        lines.append(f"  {name}:\n" + ENTRY.format(file=f"{name}.gguf", load=load) + (extra or {}).get(name, ""))
    return "\n".join(lines) + "\n"


def worker_pids(server: LiveServer) -> dict[int, str]:
    """Live worker processes of `serve` -> the model each serves (from its command line)."""
    found = {}
    for pid in child_pids(server.process.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and running(pid):
            found[pid] = argv[argv.index(b"--model") + 1].decode()
    return found


def rss_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096
    except (OSError, IndexError):
        return 0


@dataclass
class Sampler:
    """Samples, every 20 ms while running: models the supervisor holds (loading, ready, draining),
    worker processes alive, and their RSS measured from /proc (not from what they report)."""

    server: LiveServer
    max_resident: int = 0
    max_processes: int = 0
    max_rss_sum: int = 0
    samples: int = 0
    states: list[dict[str, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.server.redis_url())
        try:
            while not self._stop.wait(0.02):
                models, _budget = decode_all(client.hgetall(keys.residency()))
                resident = {n: r.state for n, r in models.items() if r.state != "unloaded"}
                pids = worker_pids(self.server)
                self.max_resident = max(self.max_resident, len(resident))
                self.max_processes = max(self.max_processes, len(pids))
                self.max_rss_sum = max(self.max_rss_sum, sum(rss_of(p) for p in pids))
                if not self.states or self.states[-1] != resident:
                    self.states.append(resident)
                self.samples += 1
        finally:
            client.close()


def residency(server: LiveServer) -> dict[str, dict[str, object]]:
    client = redis.Redis.from_url(server.redis_url())
    try:
        raw = client.hgetall(keys.residency())
    finally:
        client.close()
    return {k.decode(): json.loads(v) for k, v in raw.items()}
