"""The intake's reaper against a real Redis: it takes over a request whose worker stopped renewing its
lease, but never one this worker holds itself (a keep-alive that renewed late, as on a starved machine,
must not start a second attempt of a running request: its client would see `worker_lost`)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis

from server.queue import keys
from server.queue.messages import Job, SamplingParams
from server.worker.holdings import Holdings
from server.worker.intake import Intake, IntakeConfig
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

LEASE_S = 0.2


def delivered_to(client: redis.Redis, stream: str, consumer: str) -> tuple[Job, str]:
    """A fresh job on `stream`, read into the group by `consumer` (its lease starts now)."""
    now = time.time()
    job = Job(id=uuid.uuid4().hex, model="m", kind="chat", enqueued_at=now, deadline=now + 60,
              params=SamplingParams(max_tokens=1), messages=[{"role": "user", "content": "hi"}])
    client.xadd(stream, job.encode())
    reply: Any = client.xreadgroup(keys.GROUP, consumer, {stream: ">"}, count=1)
    ((_name, ((entry_id, _fields),)),) = reply
    return job, str(entry_id.decode())


def idle_past_lease(client: redis.Redis, stream: str, entry_id: str) -> bool:
    pending = client.xpending_range(stream, keys.GROUP, entry_id, entry_id, 1)
    return bool(pending) and int(pending[0]["time_since_delivered"]) > LEASE_S * 1000


def test_the_reaper_takes_a_lost_workers_request_but_never_its_own(client: redis.Redis) -> None:
    model = "m" + uuid.uuid4().hex[:8]
    holdings = Holdings()
    intake = Intake(client, IntakeConfig(model=model, worker_id=f"{model}-w1", lease_s=LEASE_S, max_deliveries=3),
                    holdings, room=lambda: 4)
    intake.ensure_group()
    stream = keys.request_stream(model)
    own_job, own_entry = delivered_to(client, stream, f"{model}-w1")
    holdings.hold(own_job.id, stream, own_entry)  # running here; its keep-alive has not renewed it in time
    lost_job, lost_entry = delivered_to(client, stream, f"{model}-gone")  # its worker died
    for entry in (own_entry, lost_entry):
        wait_until(lambda e=entry: idle_past_lease(client, stream, e), timeout_s=10, what="a lapsed lease")

    intake._reap()

    taken = [intake.inbox.get_nowait() for _ in range(intake.inbox.qsize())]
    assert [(t.job.id, t.entry_id, t.attempt) for t in taken] == [(lost_job.id, lost_entry, 2)]
    assert holdings.snapshot() == {own_job.id: (stream, own_entry), lost_job.id: (stream, lost_entry)}
    pending: Any = client.xpending_range(stream, keys.GROUP, "-", "+", 10)
    owners = {p["message_id"].decode(): p["consumer"].decode() for p in pending}
    assert owners == {own_entry: f"{model}-w1", lost_entry: f"{model}-w1"}
