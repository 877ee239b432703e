"""A model's residency as the supervisor of `serve` writes it to Redis and every gateway reads it.

States: `unloaded` (no worker process), `loading` (a worker started, no heartbeat yet), `ready`
(a worker beats its heartbeat), `draining` (told to stop: finishing what it holds). The hash
(`queue.keys.residency()`) expires a few seconds after the supervisor last wrote it, so a gateway
never waits on the word of a supervisor that is gone.

Memory: `estimated_bytes` from the GGUF before loading; `measured_bytes` the RSS its live workers
report now (steady); `measured_peak_bytes` the highest peak (`VmHWM`, loading included) its workers
have reported, summed over its replicas, kept after it unloads. Fit decisions use
`decision_bytes()`: the larger of the estimate and the measured peak once there is one
(`decision_basis()` says which).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

State = Literal["unloaded", "loading", "ready", "draining"]
STATES: tuple[State, ...] = ("unloaded", "loading", "ready", "draining")
BUDGET_FIELD = "_budget"
EVICTION_REASONS = ("budget", "idle")


@dataclass
class Residency:
    """One model, as the supervisor sees it."""

    state: State = "unloaded"
    load: str = "boot"
    pinned: bool = False
    estimated_bytes: int = 0
    measured_bytes: int | None = None  # the RSS its live workers reported with their heartbeat, summed
    last_used: float | None = None  # unix time a request was last queued or running for it
    loads: int = 0  # completed loads (process start to first heartbeat)
    last_load_s: float | None = None
    evictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVICTION_REASONS, 0))
    measured_peak_bytes: int | None = None  # the largest VmHWM sum its workers reported (load included)
    deferred: str | None = None  # why a boot model is unloaded: "memory budget" (the boot plan left it out)

    def decision_bytes(self) -> int:
        """What fit decisions count for this model: max(estimate, measured peak)."""
        return max(self.estimated_bytes, self.measured_peak_bytes or 0)

    def decision_basis(self) -> str:
        return "measured_peak" if (self.measured_peak_bytes or 0) > self.estimated_bytes else "estimate"

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Residency | None:
        try:
            data: Any = json.loads(raw)
            if not isinstance(data, dict) or data.get("state") not in STATES:
                return None
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError):
            return None

    def public(self) -> dict[str, Any]:
        """What `/v1/status` and `/v1/models` show."""
        return {"state": self.state, "load": self.load, "pinned": self.pinned,
                "memory_estimated_bytes": self.estimated_bytes, "memory_measured_bytes": self.measured_bytes,
                "memory_measured_peak_bytes": self.measured_peak_bytes,
                "memory_decision_bytes": self.decision_bytes(), "memory_decision_basis": self.decision_basis(),
                "deferred": self.deferred,
                "last_used": None if self.last_used is None else round(self.last_used, 3),
                "last_load_s": None if self.last_load_s is None else round(self.last_load_s, 3)}


@dataclass(frozen=True)
class Budget:
    budget_bytes: int
    estimated_in_use: int
    measured_in_use: int
    committed: int = 0  # decision bytes (max of estimate and measured peak) of the models loaded or loading

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: bytes | str) -> Budget | None:
        try:
            return cls(**json.loads(raw))
        except (ValueError, TypeError):
            return None


def decode_all(raw: dict[Any, Any]) -> tuple[dict[str, Residency], Budget | None]:
    """An `HGETALL` of the residency hash, read back (entries that do not parse are left out)."""
    models: dict[str, Residency] = {}
    budget: Budget | None = None
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == BUDGET_FIELD:
            budget = Budget.decode(value)
        elif (found := Residency.decode(value)) is not None:
            models[name] = found
    return models, budget
