"""What KEDA reads from Redis behaves as the triggers assume, on a real Redis 7 started with
compose's own redis command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from server.queue import keys

from . import compose, k8s
from .redis_process import running_redis

pytestmark = pytest.mark.integration


def redis_options() -> list[str]:
    args = compose.command(compose.load()["services"]["redis"])
    assert args[0] == "redis-server"
    return args[1:]


def test_compose_and_kubernetes_start_redis_alike() -> None:
    (container,) = k8s.pod_spec(k8s.one(k8s.render(k8s.overlay("cpu")), "StatefulSet", "redis"))["containers"]
    k8s_options = dict(zip(container["args"][1::2], container["args"][2::2], strict=True))
    compose_options = dict(zip(redis_options()[::2], redis_options()[1::2], strict=True))
    k8s_options.pop("--maxmemory")  # sized to each container
    compose_options.pop("--maxmemory")
    assert k8s_options == compose_options


def test_lag_and_pending_follow_the_queue_protocol(tmp_path: Path) -> None:
    stream, group = keys.request_stream("smollm2"), keys.GROUP
    with running_redis(redis_options(), tmp_path, min_major=7) as (port, _):
        client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        config = client.config_get("*")
        assert config["appendonly"] == "yes"
        assert config["maxmemory-policy"] == "noeviction"
        assert int(config["maxmemory"]) > 0

        # No stream yet: KEDA reports lag 0 (ERR no such key), so the floor is minReplicaCount.
        client.xgroup_create(stream, group, id="$", mkstream=True)
        ids = [client.xadd(stream, {"job": str(i)}) for i in range(5)]
        client.xreadgroup(group, "worker-a", {stream: ">"}, count=2)

        def state() -> tuple[int | None, int]:
            (info,) = client.xinfo_groups(stream)
            return info["lag"], client.xpending(stream, group)["pending"]

        assert state() == (3, 2)  # backlog trigger sees 3, in-flight trigger sees 2
        client.xack(stream, group, *ids[:2])
        client.xdel(stream, *ids[:2])  # a worker's finish: XACK then XDEL
        assert state() == (3, 0)  # deleting delivered entries keeps lag exact

        client.xdel(stream, ids[4])  # deleting an entry no worker has read yet ...
        assert state()[0] is None  # ... makes lag unknown; KEDA's client reads it as 0
        client.close()
