"""How long an idle decode thread lets a first newcomer wait for the others of its cohort.

Requests that end in the same decode step often come from clients that send their next request as
soon as they have the answer (closed-loop clients: agents, evaluation runs, batch jobs, benchmarks).
Their next requests reach the worker a few milliseconds apart. If the engine starts a step with the
first one alone, the others arrive while it runs and wait for the whole step: their first token
comes a step later, and the cohort falls out of step for good (each later newcomer then waits for
part of a step). So when a step ended `k` > 1 requests and left the engine idle, the first newcomer
waits at most `GATHER_S` for up to `k - 1` more before the next step starts (a dynamic batcher's
queue delay, bounded; never while other sequences are decoding, so no running stream is slowed, and
never for a lone request: one that ended alone is answered at once).
"""

from __future__ import annotations

GATHER_S = 0.005


class Cohort:
    def __init__(self, gather_s: float = GATHER_S) -> None:
        self.gather_s = gather_s
        self._returning = 0  # requests that ended in the step that left the engine idle
        self._deadline: float | None = None
        self._expected = 0

    def ended(self, count: int, idle: bool) -> None:
        """A step ended `count` requests; `idle`: nothing is left to decode."""
        self._returning = count if idle else 0

    def first_arrived(self, now: float) -> None:
        """An idle engine took its first newcomer: wait for the rest of the cohort, if there is one."""
        self._expected = self._returning - 1
        self._returning = 0
        self._deadline = now + self.gather_s if self._expected > 0 else None

    def idle_tick(self) -> None:
        """The idle wait passed with no newcomer: the cohort is not coming back."""
        self._returning = 0

    def wait_s(self, now: float) -> float | None:
        """How long to wait for the next newcomer before stepping; None: step now."""
        if self._deadline is None or self._expected <= 0:
            return None
        left = self._deadline - now
        if left <= 0:
            self._deadline = None
            return None
        return left

    def arrived(self) -> None:
        self._expected -= 1
        if self._expected <= 0:
            self._deadline = None
