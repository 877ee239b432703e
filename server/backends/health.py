"""Passive upstream health of one hosted model: a circuit breaker fed by the requests themselves.

No probe is ever sent (a probe costs money on a real provider): the circuit only looks at how the
requests it let through ended, one outcome per request, after its retries (`HostedGeneration.start`):

- *down* (the upstream's fault): no HTTP answer (connection refused or reset), no first chunk within
  the entry's `timeout`, or a 5xx (`UpstreamFailure.upstream_down`);
- *up*: a first chunk arrived, or the upstream answered with a 4xx. A 429 means the provider is busy or
  we are over its quota, not that it is down: it is an answer, it closes the circuit like a success (the
  429 itself still reaches the client or moves a fallback chain on). 400s and 401/403/402/404 are answers
  too: they say something about the request or our configuration, not about reachability;
- neither: the request never reached the upstream (no free concurrency slot, the client left first);
  a trial that ends so lets the next request be the trial.

States (`state`):

    closed     the upstream is presumed reachable; FAILURES_TO_OPEN consecutive *down* -> open
    open       new requests fail at once (503 upstream_unavailable, Retry-After: the cool-down left)
               for COOL_DOWN_S; then the next request is let through as the trial -> half_open
    half_open  the trial is in flight, every other request still fails at once;
               the trial *up* -> closed, *down* -> open (a fresh cool-down), neither -> open (cool-down over)

A request let through before the circuit opened may still end after: *up* closes the circuit (the
upstream answered), *down* only counts. What happens after the first chunk (a stream broken mid-answer)
is not counted: the upstream was reachable. `/v1/status` shows a model whose circuit is not closed as
`unreachable`; a router predicts it as unreachable while a request would be refused (`admits_now`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from server.errors import UpstreamUnavailableError

log = logging.getLogger("slm.hosted")

FAILURES_TO_OPEN = 3  # consecutive requests that found the upstream down
COOL_DOWN_S = 10.0  # how long an open circuit refuses before it lets a trial through

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class HealthPolicy:
    """How quickly a hosted model is declared unreachable, and how long it stays so before a trial."""

    failures_to_open: int = FAILURES_TO_OPEN
    cool_down_s: float = COOL_DOWN_S

    def __post_init__(self) -> None:
        if self.failures_to_open < 1 or not (self.cool_down_s >= 0 and math.isfinite(self.cool_down_s)):
            raise ValueError(f"invalid upstream health policy: {self}")


DEFAULT_POLICY = HealthPolicy()


class UpstreamHealth:
    """The circuit of one hosted model. Not thread-safe: it lives on the gateway's event loop."""

    def __init__(self, model: str, policy: HealthPolicy = DEFAULT_POLICY, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.model = model
        self.policy = policy
        self.clock = clock
        self.on_change = on_change  # called with `up` each time the circuit closes or opens
        self.failures = 0  # consecutive requests that found the upstream down
        self.opened_at: float | None = None  # None: closed
        self._trial = False  # the trial request is in flight (half-open)

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._trial else "open"

    @property
    def up(self) -> bool:
        """Presumed reachable: the circuit is closed."""
        return self.opened_at is None

    def retry_after_s(self) -> float:
        """Seconds until an open circuit lets its trial through (0 when closed or already due)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.policy.cool_down_s - self.clock())

    def admits_now(self) -> bool:
        """Whether a request made now would be let through (closed, or open with its cool-down over and no
        trial in flight). Asks only: nothing changes."""
        if self.opened_at is None:
            return True
        return not self._trial and self.clock() - self.opened_at >= self.policy.cool_down_s

    def admit(self) -> bool:
        """Let one request through, or raise 503 `upstream_unavailable`. True: this request is the trial;
        its outcome must be reported (`succeeded`, or `failed` / `abandoned` with `trial=True`)."""
        if self.opened_at is None:
            return False
        if not self.admits_now():
            wait = self.retry_after_s()
            when = "a trial request is checking it now" if self._trial else f"it is tried again in {math.ceil(wait)}s"
            raise UpstreamUnavailableError(
                f"The hosted model '{self.model}' is unreachable upstream ({self.failures} consecutive failures); "
                f"{when}.", retry_after=max(1.0, wait))
        self._trial = True
        log.info("hosted model %s: cool-down over, letting one request through as a trial", self.model)
        return True

    def succeeded(self) -> None:
        """The upstream answered (a first chunk, or a 4xx): the circuit closes, whoever's request it was."""
        was_open = self.opened_at is not None
        self.failures = 0
        self.opened_at = None
        self._trial = False
        if was_open:
            log.warning("hosted model %s: upstream reachable again", self.model)
            self._changed(True)

    def failed(self, *, trial: bool = False) -> None:
        """The upstream was down for one request (no answer, a timeout, a 5xx)."""
        self.failures += 1
        if trial and self._trial:
            self._trial = False
            self._open("the trial request failed")
        elif self.opened_at is None and self.failures >= self.policy.failures_to_open:
            self._open(f"{self.failures} consecutive requests failed")
            self._changed(False)

    def abandoned(self, *, trial: bool = False) -> None:
        """The request never reached the upstream (no slot, the client left): nothing learnt."""
        if trial and self._trial:
            self._trial = False  # the cool-down is over: the next request is the trial

    def _open(self, why: str) -> None:
        self.opened_at = self.clock()
        log.warning("hosted model %s: upstream unreachable (%s); requests fail at once for %gs, then one is "
                    "tried", self.model, why, self.policy.cool_down_s)

    def _changed(self, up: bool) -> None:
        if self.on_change is not None:
            self.on_change(up)
