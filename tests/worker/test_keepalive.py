"""The keep-alive thread's writes on a real Redis: the heartbeat and what it renews, the cancel flags it
finds, the goodbye."""

from __future__ import annotations

import logging
import os
import time
import uuid

import pytest
import redis

from server.queue import keys
from server.worker import keepalive


def names() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"model-{tag}", f"worker-{tag}"


def beat(client: redis.Redis, model: str, worker_id: str, *, draining: bool = False) -> None:
    keepalive.heartbeat(client, model=model, worker_id=worker_id, model_file="m.gguf", slots=4, busy=1,
                        draining=draining, kv_usage=0.123456, ttl_s=5.0)


def test_a_heartbeat_writes_the_beat_and_the_info_and_renews_the_prefixes(client: redis.Redis) -> None:
    model, worker_id = names()
    client.hset(keys.worker_prefixes(worker_id), "0", "abc")  # what a slot holds, written by the decode thread
    before = time.time()
    beat(client, model, worker_id, draining=True)
    score = client.zscore(keys.worker_heartbeats(model), worker_id)
    assert score is not None and before <= score <= time.time()
    info = {k.decode(): v.decode() for k, v in client.hgetall(keys.worker_info(worker_id)).items()}
    assert (info["model"], info["slots"], info["busy"], info["file"]) == (model, "4", "1", "m.gguf")
    assert info["draining"] == "1" and info["kv_usage"] == "0.1235" and info["pid"] == str(os.getpid())
    assert int(info["rss"]) > 0 and int(info["peak"]) >= int(info["rss"])
    assert 0 < client.ttl(keys.worker_info(worker_id)) <= 5
    assert 0 < client.ttl(keys.worker_prefixes(worker_id)) <= 5


def test_a_heartbeat_drops_the_models_beats_older_than_a_minute(client: redis.Redis) -> None:
    model, worker_id = names()
    client.zadd(keys.worker_heartbeats(model), {"gone": time.time() - keepalive.BEATS_KEPT_S - 1,
                                                "recent": time.time() - 30})
    beat(client, model, worker_id)
    assert {m.decode() for m in client.zrange(keys.worker_heartbeats(model), 0, -1)} == {"recent", worker_id}


def test_cancelled_names_only_the_flagged_requests(client: redis.Redis) -> None:
    held = [uuid.uuid4().hex for _ in range(4)]
    assert keepalive.cancelled(client, held) == []
    client.set(keys.cancel_flag(held[1]), 1, ex=60)
    client.set(keys.cancel_flag(held[3]), 1, ex=60)
    assert keepalive.cancelled(client, held) == [held[1], held[3]]


def test_leaving_removes_the_worker_from_what_the_gateway_reads(client: redis.Redis) -> None:
    model, worker_id = names()
    beat(client, model, worker_id)
    client.zadd(keys.fair_queue(model) + "idle", {worker_id: 1})
    client.hset(keys.worker_prefixes(worker_id), "0", "abc")
    keepalive.leave(client, model=model, worker_id=worker_id)
    assert client.zscore(keys.worker_heartbeats(model), worker_id) is None
    assert client.zscore(keys.fair_queue(model) + "idle", worker_id) is None
    assert not client.exists(keys.worker_info(worker_id), keys.worker_prefixes(worker_id))


def test_leaving_without_redis_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slm.worker")
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    keepalive.leave(gone, model="m", worker_id="w")  # nothing listens on port 1
    assert "could not deregister" in caplog.text


def test_cancelled_sends_nothing_for_no_request() -> None:
    gone = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert keepalive.cancelled(gone, []) == []  # nothing listens on port 1: a command would raise
