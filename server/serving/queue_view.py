"""The gateway's side of the fair queue.

`QueueView`: what the gateway knows of each local model's fair queue, refreshed with worker presence
(every 0.5 s, no Redis call per request): the jobs waiting per priority class, and the drain rate
(jobs taken a second, a moving average of the `taken` counter's growth) that estimates waits and
`Retry-After`. Pure bookkeeping; the reads are `QueueClient.fair_depths`.

`FairQueueing`: the policy (`SLM_QUEUE_POLICY`, the per-key settings) and that view together: a
request's class, how its job is admitted, and what the metrics say per class."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.metrics import Metrics
from server.queue import priority as priorities
from server.queue.client import Fairness
from server.security.queue_policy import KeyPolicy, PolicySource
from server.serving.routing import Ewma
from server.settings import Settings

DRAIN_ALPHA = 0.2
MIN_SPAN_S = 0.2  # samples closer than this are not a rate


@dataclass
class ModelQueue:
    waiting: dict[str, int] = field(default_factory=dict)  # class label -> jobs waiting
    taken: int | None = None
    taken_at: float = 0.0
    drain: Ewma = field(default_factory=lambda: Ewma(DRAIN_ALPHA))


class QueueView:
    def __init__(self) -> None:
        self.models: dict[str, ModelQueue] = {}

    def update(self, model: str, waiting: dict[str, int], taken: int, now: float) -> None:
        found = self.models.setdefault(model, ModelQueue())
        found.waiting = waiting
        if found.taken is not None and now - found.taken_at >= MIN_SPAN_S:
            grown = taken - found.taken
            if grown >= 0 and (grown > 0 or sum(waiting.values()) > 0):  # an idle queue says nothing of its rate
                found.drain.add(grown / (now - found.taken_at))
        if found.taken is None or now - found.taken_at >= MIN_SPAN_S:
            found.taken, found.taken_at = taken, now

    def drain_per_s(self, model: str) -> float:
        found = self.models.get(model)
        if found is None or found.drain.value is None:
            return 0.0
        return found.drain.value

    def waiting(self, model: str) -> dict[str, int]:
        found = self.models.get(model)
        return dict(found.waiting) if found is not None else {}

    def ahead_of(self, model: str, priority: int) -> int:
        """Jobs waiting that a new job of class `priority` would wait behind (its class and higher)."""
        return sum(n for label, n in self.waiting(model).items() if int(label) >= priority)

    def wait_ms(self, model: str, position: int) -> int | None:
        """The wait of the job at `position` at the measured drain rate; None before any was measured."""
        rate = self.drain_per_s(model)
        return None if rate <= 0 else int(position / rate * 1000)


class FairQueueing:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.queue_policy == "fair"
        self.policy = PolicySource(
            KeyPolicy(1.0, settings.priority_default, max(settings.priority_max, settings.priority_default),
                      settings.queue_key_share),
            settings.queue_policy_file, interval_s=settings.reload_interval_s or 1.0)
        self.view = QueueView()

    def priority_for(self, key: str, asked: int | None) -> int:
        """The request's class: what it asked for (400 above its key's ceiling), else its key's default."""
        return self.policy.current().priority_for(key, asked)

    def admission(self, model: str, key: str) -> Fairness | None:
        """How a job of `key` enters `model`'s queue; None: FIFO."""
        if not self.enabled:
            return None
        policy = self.policy.current().for_key(key)
        return Fairness(key, policy.weight, policy.max_queue_share, self.view.drain_per_s(model))

    def ahead_of(self, model: str, priority: int) -> int:
        """Jobs waiting that a new job of class `priority` would wait behind (FIFO: none beyond the stream)."""
        return self.view.ahead_of(model, priority) if self.enabled else 0

    def observe(self, found: dict[str, tuple[dict[str, int], int]], now: float, metrics: Metrics) -> None:
        for model, (waiting, taken) in found.items():
            self.view.update(model, waiting, taken, now)
            for level in range(priorities.LOWEST, priorities.HIGHEST + 1):
                label = priorities.label(level)
                metrics.queue_waiting.labels(model, label).set(waiting.get(label, 0))
