"""A worker's admissions against a real Redis and the real SmolLM2 engine: the requests it takes
together are started with one write (their `started` events and prefixes, before the step), and each
admission's running mark records that the one before it got through its own work."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from server.queue import keys
from server.queue.messages import Job, SamplingParams, decode_event
from server.queue.replies import Command
from server.worker.intake import Taken
from server.worker.worker import Worker, WorkerConfig
from tests.engine_helpers import smollm2_engine

pytestmark = pytest.mark.integration


def job(model: str, text: str) -> Job:
    now = time.time()
    return Job(id=uuid.uuid4().hex, model=model, kind="chat", enqueued_at=now, deadline=now + 60,
               params=SamplingParams(max_tokens=2, temperature=0), messages=[{"role": "user", "content": text}])


def test_requests_taken_together_start_with_one_write_and_pass_their_marks_on(client: redis.Redis) -> None:
    model = "m" + uuid.uuid4().hex[:8]
    worker = Worker(smollm2_engine(parallel=4), client, WorkerConfig(model=model))
    writes: list[list[Command]] = []
    put = worker.outbox.put

    def counted_put(commands: list[Command]) -> None:
        writes.append(commands)
        put(commands)

    worker.outbox.put = counted_put  # type: ignore[method-assign]
    jobs = [job(model, "Say hi."), job(model, "Say bye."), job(model, "Count to three.")]
    for i, j in enumerate(jobs):
        worker.intake.inbox.put(Taken(f"{i + 1}-0", j, 1, time.time(), keys.request_stream(model)))
    try:
        worker._take_new(block=False)
        assert worker.outbox.flush(5)
        started: list[Any] = [client.xrange(keys.response_stream(j.id)) for j in jobs]
        passed = [client.get(keys.job_passed(j.id)) for j in jobs]
    finally:
        worker.engine.close()
        for j in jobs:
            client.delete(keys.response_stream(j.id), keys.job_running(j.id), keys.job_passed(j.id))
    assert len(writes) == 1  # the three `started` (and the prefixes) in one write
    assert [[decode_event(fields)["type"] for _, fields in events] for events in started] == [["started"]] * 3
    assert passed == [b"1", b"1", None]  # the last is cleared by its `started`, written before the step
