"""Where the decode thread's time goes, step by step (`SLM_TRACE_STEPS=true`).

Each step of the decode loop is timed in three phases, and the writing of its events twice:

    step      the engine's step: the batch, `llama_decode`, sampling and detokenizing
    emit      writing what the step produced (the outbox: Redis, or the local gateway's socket), wall time
    emit_cpu  the same, in the decode thread's own CPU time; `emit` minus this is time the thread spent
              off its core, as when the processes its writes woke (Redis, a gateway, their clients) ran
              on it first
    between   the rest of the loop, from one step's events written to the next step's start (answers
              read, cancels, admissions); only between consecutive steps, never across an idle wait

On a host whose cores llama.cpp's threads all compute on, every microsecond of `emit` and `between`
lengthens the time per token; `benchmarks/RUNS.md` holds what these showed against llama-server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

PHASES = ("step", "emit", "emit_cpu", "between")


class StepTimer:
    def __init__(self, observe: Callable[[str, float], None], *, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.thread_time) -> None:
        self._observe = observe  # (phase, seconds)
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._emitted: float | None = None  # when the last step's events were written, while steps follow on

    def run(self, step: Callable[[], T], emit: Callable[[T], None]) -> None:
        """Run one step and write what it produced, timing both (and the loop's time since the last one)."""
        start = self._clock()
        outputs = step()
        stepped = self._clock()
        cpu_start = self._cpu_clock()  # the CPU interval sits inside the wall interval: emit_cpu <= emit
        emit(outputs)
        cpu_end = self._cpu_clock()
        emitted = self._clock()
        if self._emitted is not None:
            self._observe("between", start - self._emitted)
        self._observe("step", stepped - start)
        self._observe("emit", emitted - stepped)
        self._observe("emit_cpu", cpu_end - cpu_start)
        self._emitted = emitted

    def idle(self) -> None:
        """Nothing is left to decode: the wait before the next step is no gap between steps."""
        self._emitted = None
