"""Where a local request's time to first token went, stage by stage (`SLM_TRACE_STAGES=true`).

The gateway and the worker each mark when a stage ended (wall clock; the worker's marks come back
with `done`); consecutive marks give the stages, which add up to the TTFT the client saw:

    gateway_in   arrival at the gateway -> job handed to the queue (parse, validate, plan)
    queue        -> a worker's intake read it (admission and XADD, waits for a free slot; marked
                 before the XADD, as a worker may read the job before the gateway resumes)
    handoff      intake -> the decode thread took it (between two decode steps)
    tokenize     chat template, tokenizer, sampler; the sequence joins the batch
    batch_wait   -> the decode step that first took its prompt tokens began
    prefill      that step (and any further chunks of the prompt) -> first token sampled
    to_gateway   first token -> the gateway read it (outbox, Redis, the gateway's reader)
    gateway_out  -> the first chunk handed to the client's connection

Marks of different machines compare through their clocks: across hosts the middle stages carry the
clock skew (the first and last are one clock's, always right).
"""

from __future__ import annotations

STAGES = ("gateway_in", "queue", "handoff", "tokenize", "batch_wait", "prefill", "to_gateway", "gateway_out")


def breakdown(marks: dict[str, float], arrived: float, first_chunk: float) -> dict[str, float] | None:
    """Seconds per stage from the joined marks, the arrival and the first chunk's wall-clock times;
    None when a mark is missing (an old worker, a request that never produced text)."""
    needed = ("submitted", "read", "admitted", "added", "batch_wait_ms", "first_token", "first_read")
    if any(name not in marks for name in needed):
        return None
    # the engine times the batch wait from its own admission, microseconds before the `added` mark
    batched = min(marks["added"] + marks["batch_wait_ms"] / 1000.0, marks["first_token"])
    points = [arrived, marks["submitted"], marks["read"], marks["admitted"], marks["added"], batched,
              marks["first_token"], marks["first_read"], first_chunk]
    return {stage: points[i + 1] - points[i] for i, stage in enumerate(STAGES)}
