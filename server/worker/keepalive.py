"""What the keep-alive thread (`Worker._keep_alive`) tells Redis about its worker, off the decode
thread: its heartbeat and slot counts, which of the requests it holds were cancelled, and its goodbye.

The gateway reads the heartbeat set and the info hash (`/v1/status`, residency, a stalled request's
liveness check); the intake reads the heartbeats to tell a gone worker's stream from a busy one's.
"""

from __future__ import annotations

import logging
import os
import time

import redis

from server.queue import keys
from server.residency.measure import process_peak_rss, process_rss

log = logging.getLogger("slm.worker")

BEATS_KEPT_S = 60  # heartbeats older than this leave the model's set


def heartbeat(client: redis.Redis, *, model: str, worker_id: str, model_file: str, slots: int, busy: int,
              draining: bool, kv_usage: float, ttl_s: float) -> None:
    """One pipeline: the beat in the model's set (old beats dropped), the info hash, and the expiry of
    the info and of the slot prefixes (`prefixes.py`), both renewed only while the worker beats."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    pipe.zadd(keys.worker_heartbeats(model), {worker_id: now})
    pipe.zremrangebyscore(keys.worker_heartbeats(model), 0, now - BEATS_KEPT_S)
    info_key = keys.worker_info(worker_id)
    pipe.hset(info_key, mapping={"model": model, "slots": slots, "busy": busy, "file": model_file,
                                 "draining": int(draining), "rss": process_rss(), "peak": process_peak_rss(),
                                 "kv_usage": round(kv_usage, 4), "pid": os.getpid()})
    pipe.expire(info_key, max(2, int(ttl_s)))
    pipe.expire(keys.worker_prefixes(worker_id), max(2, int(ttl_s)))
    pipe.execute()


def cancelled(client: redis.Redis, request_ids: list[str]) -> list[str]:
    """Those of `request_ids` whose cancel flag is set; no command for none, one small command when none is
    flagged (the usual answer), whatever is held."""
    if not request_ids:
        return []
    flags = [keys.cancel_flag(r) for r in request_ids]
    if not client.exists(*flags):
        return []
    pipe = client.pipeline(transaction=False)
    for flag in flags:
        pipe.exists(flag)
    return [r for r, hit in zip(request_ids, pipe.execute(), strict=True) if hit]


def leave(client: redis.Redis, *, model: str, worker_id: str) -> None:
    """Out of the heartbeat set and the fair queue's idle list, its info and prefixes gone (best effort:
    a worker that cannot say goodbye is forgotten when its heartbeat ages out)."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.zrem(keys.worker_heartbeats(model), worker_id)
        pipe.zrem(keys.fair_queue(model) + "idle", worker_id)
        pipe.delete(keys.worker_info(worker_id), keys.worker_prefixes(worker_id))
        pipe.execute()
    except redis.RedisError:
        log.info("could not deregister from redis on exit")
