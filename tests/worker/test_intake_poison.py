"""The poison verdict against a real Redis, when a worker admitted several requests before writing
their `started` (it writes them in one go, before the step): a crash is blamed on the request whose
own work was under way, never on one the next admission's mark recorded as passed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from server.queue import keys, replies
from server.queue.messages import decode_event
from server.worker.holdings import Holdings
from server.worker.intake import Intake, IntakeConfig
from tests.conftest import wait_until
from tests.worker.test_intake_reap import LEASE_S, delivered_to, idle_past_lease

pytestmark = pytest.mark.integration


def intake_of(client: redis.Redis, model: str, worker_id: str) -> Intake:
    intake = Intake(client, IntakeConfig(model=model, worker_id=worker_id, lease_s=LEASE_S, max_deliveries=5),
                    Holdings(), room=lambda: 4)
    intake.ensure_group()
    return intake


def test_a_crash_is_blamed_on_the_request_being_admitted_not_the_one_admitted_before(client: redis.Redis) -> None:
    model = "m" + uuid.uuid4().hex[:8]
    intake = intake_of(client, model, f"{model}-w2")
    stream = keys.request_stream(model)
    # the lost worker admitted `first` (its `started` still unwritten), then began `second` and died
    first, first_entry = delivered_to(client, stream, f"{model}-gone")
    second, second_entry = delivered_to(client, stream, f"{model}-gone")
    assert replies.mark_running(client, first.id, 1, 60)
    assert replies.mark_running(client, second.id, 1, 60, passed=(first.id, 1))
    for entry in (first_entry, second_entry):
        wait_until(lambda e=entry: idle_past_lease(client, stream, e), timeout_s=10, what="a lapsed lease")

    intake._reap()

    taken = [intake.inbox.get_nowait() for _ in range(intake.inbox.qsize())]
    assert [(t.job.id, t.attempt) for t in taken] == [(first.id, 2)]  # redelivered
    events: Any = client.xrange(keys.response_stream(second.id))
    verdicts = [decode_event(fields) for _, fields in events]
    assert [(v["type"], v.get("code")) for v in verdicts] == [("error", "worker_crashed")]
    assert client.xrange(keys.response_stream(first.id)) == []


def test_a_passed_mark_of_an_older_attempt_clears_nothing(client: redis.Redis) -> None:
    """Attempt 1 got through on one worker; attempt 2 crashed another while starting it: dead-lettered."""
    model = "m" + uuid.uuid4().hex[:8]
    intake = intake_of(client, model, f"{model}-w3")
    stream = keys.request_stream(model)
    job, entry = delivered_to(client, stream, f"{model}-a")
    other = uuid.uuid4().hex
    assert replies.mark_running(client, other, 1, 60, passed=(job.id, 1))  # attempt 1 passed on worker a
    client.xclaim(stream, keys.GROUP, f"{model}-b", 0, [entry])  # delivery 2: worker b
    assert replies.mark_running(client, job.id, 2, 60)  # b began it and died
    wait_until(lambda: idle_past_lease(client, stream, entry), timeout_s=10, what="a lapsed lease")

    intake._reap()

    assert intake.inbox.qsize() == 0
    events: Any = client.xrange(keys.response_stream(job.id))
    assert [decode_event(fields)["code"] for _, fields in events] == ["worker_crashed"]
