"""What the gateway knows of local models' workers, refreshed in the background (no Redis call per
request): live workers and queue depth per model, and the residency the supervisor of `serve`
publishes (`server/residency/state.py`).

A request for a model with no live worker waits in its queue (bounded by the queue timeout) instead
of answering 503 `no_worker` when the model loads on demand (`load: on_demand`: `serve` starts it,
or KEDA scales its Deployment from zero) or when a supervisor manages its residency (it was unloaded
to make room or for being idle, and its queued request loads it again).
"""

from __future__ import annotations

from server.registry import LocalModel
from server.residency.state import Budget, Residency


class WorkerPresence:
    """Which local models have live workers, and the residency of each (when a supervisor publishes it)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.depths: dict[str, int] = {}
        self.residency: dict[str, Residency] = {}
        self.budget: Budget | None = None
        self.redis_ok = False
        self.checked_at = 0.0

    def waits_for(self, model: str, entry: LocalModel) -> bool:
        """Whether a request finding no live worker of `model` should wait for one to load."""
        return entry.on_demand or model in self.residency

    def expected_ready(self, model: str, entry: LocalModel) -> bool:
        """Whether `/ready` waits for a worker of `model`: a boot model, unless the supervisor unloaded it
        (a boot model still loading at the start is waited for)."""
        if entry.on_demand:
            return False
        found = self.residency.get(model)
        return found is None or found.state in ("loading", "ready")

    def cold(self, model: str, entry: LocalModel) -> bool:
        """No live worker, but one will load for a queued request."""
        return self.counts.get(model, 0) < 1 and self.waits_for(model, entry)

    def load_s(self, model: str) -> float | None:
        """The model's last measured load time (process start to first heartbeat), if any."""
        found = self.residency.get(model)
        return None if found is None else found.last_load_s
