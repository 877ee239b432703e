"""A request's `n` choices on a worker: one engine sequence each (`{job id}#{index}`), their text
gathered between flushes, their finishes folded into the request's one `done`.

One request's choices hold at most `parallel - 1` slots (the one slot when `parallel` is 1); the
rest wait (`admit_waiting`) so that, however large its `n`, a slot is left for other requests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from server.engine.batch_engine import BatchEngine, Finish, Output
from server.engine.params import SamplingParams
from server.queue.events import ChoiceFinished, Done, Failed, TextDelta
from server.queue.messages import Job

Waiting = tuple[str, list[int], SamplingParams]  # a choice's sequence id, prompt tokens and parameters


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    def drain(self, index: int, attempt: int) -> TextDelta | None:
        """The `delta` event for what gathered since the last one (None: nothing did), emptied."""
        if not (self.text or self.tokens):
            return None
        event = TextDelta(attempt, index, "".join(self.text), self.tokens, self.logprobs or None)
        self.text = []
        self.logprobs = []
        self.tokens = 0
        return event


@dataclass(eq=False)
class Active:
    """One request held by this worker: `n` sequences in the engine (`{job id}#{index}`)."""

    job: Job
    entry_id: str
    attempt: int
    remaining: set[int]
    choices: dict[int, Choice] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    finish_reason: str = "stop"
    stop_sequence: str | None = None
    cancelled: bool = False
    error: bool = False
    running: int = 0  # its sequences in the engine now
    trace: dict[str, float] | None = None  # a traced job's stage marks (wall clock), sent with `done`
    batch_wait_ms: float = 0.0
    stream: str = ""  # where its entry is (the model's shared stream or this worker's own): acknowledged there
    events: int = 0  # how many events of this attempt were written (the next one is number events + 1)

    def number(self) -> int:
        """The next event's number in this attempt (its entry id's second part, `replies.event`)."""
        self.events += 1
        return self.events

    def add(self, index: int, out: Output) -> Choice:
        """Gather one step's output for choice `index`."""
        choice = self.choices.setdefault(index, Choice())
        if out.text:
            choice.text.append(out.text)
        if out.logprobs:
            choice.logprobs.extend(out.logprobs)
        choice.tokens += out.tokens
        return choice

    def finish_choice(self, index: int, fin: Finish) -> ChoiceFinished | None:
        """Fold choice `index`'s finish into the request; the `finish` event to send when `n` > 1."""
        self.remaining.discard(index)
        self.running -= 1
        self.completion_tokens += fin.completion_tokens
        self.prompt_tokens = fin.prompt_tokens
        self.cached_tokens = max(self.cached_tokens, fin.cached_tokens)
        self.prompt_ms = max(self.prompt_ms, fin.prompt_ms)
        self.generation_ms = max(self.generation_ms, fin.generation_ms)
        self.batch_wait_ms = max(self.batch_wait_ms, fin.batch_wait_ms)
        self.cancelled = self.cancelled or fin.reason == "cancelled"
        if fin.reason == "error":
            self.error = True
        if self.job.n > 1 and fin.reason != "error":
            return ChoiceFinished(self.attempt, index, finish_reason(fin))
        self.finish_reason = finish_reason(fin)
        self.stop_sequence = fin.stop_sequence
        return None


def finish_reason(fin: Finish) -> str:
    return "length" if fin.reason == "length" else "stop"


def sequences(job: Job, params: SamplingParams) -> list[tuple[str, SamplingParams]]:
    """One engine sequence per choice; a seeded request's choices get seeds `seed`, `seed + 1`, ..."""
    return [(f"{job.id}#{i}", params if params.seed is None or i == 0
             else params.model_copy(update={"seed": params.seed + i})) for i in range(job.n)]


def final_event(act: Active) -> Done | Failed:
    if act.error:
        return Failed(act.attempt, 500, "generation_failed", "The model failed while generating.",
                      error_type="server_error")
    return Done(act.attempt, act.finish_reason, cancelled=act.cancelled, stop_sequence=act.stop_sequence,
                usage={"prompt_tokens": act.prompt_tokens, "completion_tokens": act.completion_tokens,
                       "cached_tokens": act.cached_tokens},
                timings={"prompt_ms": round(act.prompt_ms, 3), "predicted_ms": round(act.generation_ms, 3)},
                trace=None if act.trace is None else {**act.trace, "batch_wait_ms": round(act.batch_wait_ms, 3)})


def admit_waiting(waiting: deque[Waiting], active: dict[str, Active],
                  engine: BatchEngine) -> tuple[deque[Waiting], int]:
    """Put waiting choices into free slots, each request under its cap; what still waits, and how many
    of those would take the next free slots (the worker's `claimable`, which the intake leaves free)."""
    cap = max(1, engine.parallel - 1)
    kept: deque[Waiting] = deque()
    claimed: dict[str, int] = {}  # per request: choices that would take the next free slots
    while waiting:
        item = waiting.popleft()
        job_id = item[0].rpartition("#")[0]
        act = active.get(job_id)
        running = (act.running if act is not None else 0) + claimed.get(job_id, 0)
        if running < cap and engine.free_slots() > 0:
            engine.add(*item)
            if act is not None:
                act.running += 1
            continue
        kept.append(item)
        if running < cap:
            claimed[job_id] = claimed.get(job_id, 0) + 1
    return kept, sum(claimed.values())
