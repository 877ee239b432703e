"""What the gateway knows of each local model's fair queue, refreshed with worker presence (every 0.5 s,
no Redis call per request): the jobs waiting per priority class, and the drain rate (jobs taken a
second, a moving average of the `taken` counter's growth) that estimates waits and `Retry-After`.
Pure bookkeeping; the reads are `QueueClient.fair_depths`."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.serving.routing import Ewma

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
