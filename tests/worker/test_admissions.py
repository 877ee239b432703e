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
from server.queue.messages import Job, SamplingParams, decode_event, decode_event_value
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


def test_a_short_prompts_started_reaches_the_feed_with_its_first_token_a_long_ones_at_once(
        client: redis.Redis) -> None:
    """Both `started` are in their streams before the step; on the gateway's channel, the short prompt's
    comes only with its first token (saying how long it was held), the long prompt's at once."""
    model = "m" + uuid.uuid4().hex[:8]
    channel = keys.event_feed(uuid.uuid4().hex)
    worker = Worker(smollm2_engine(parallel=2, n_ctx=2048), client, WorkerConfig(model=model))
    short = job(model, "Say hi.").model_copy(update={"feed": channel})
    long = job(model, "Summarise: " + "the river runs east and the hills rise west. " * 40).model_copy(
        update={"feed": channel})
    sub = client.pubsub()
    sub.subscribe(channel)
    try:
        assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        for i, j in enumerate((short, long)):
            worker.intake.inbox.put(Taken(f"{i + 1}-0", j, 1, time.time(), keys.request_stream(model)))
        worker._take_new(block=False)
        assert worker.outbox.flush(5)
        in_streams = [client.xlen(keys.response_stream(j.id)) for j in (short, long)]
        before_step = published(sub)  # the flush read Redis's answers: what it published is here too
        worker._emit(worker.engine.step())  # the short prompt's one step: its first token
        assert worker.outbox.flush(5)
        after = published(sub)
    finally:
        sub.close()
        worker.engine.close()
        for j in (short, long):
            client.delete(keys.response_stream(j.id), keys.job_running(j.id), keys.job_passed(j.id))
    assert in_streams == [1, 1]
    assert [(rid, m["type"]) for rid, m in before_step] == [(long.id, "started")]
    short_events = [m for rid, m in after if rid == short.id]
    assert short_events[0]["type"] == "started" and short_events[0]["held_ms"] > 0
    assert short_events[1]["type"] == "delta"


def published(sub: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (request id, event) pairs published so far on the subscription's channel."""
    out: list[tuple[str, dict[str, Any]]] = []
    while (message := sub.get_message(timeout=0)) is not None:
        stream, _entry_id, value = message["data"].split(b"\n", 2)
        out.append((stream.decode().rpartition(":")[2], decode_event_value(value)))
    return out
