"""The `ha` overlay and the Bitnami chart's values agree: gateway, workers and KEDA reach the master
through the chart's sentinels, with the chart's master name, port and secret; no single Redis is left."""

from __future__ import annotations

from typing import Any

import yaml

from server.redis_connect import parse_sentinels
from server.settings import Settings

from . import k8s

HA = k8s.overlay("ha")
VALUES = HA / "redis-values.yaml"
RELEASE = "redis"  # `helm install redis ...`: the chart's service is then `redis`


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return loaded


def env_of(objects: list[k8s.Obj]) -> dict[str, str]:
    config = next(o for o in k8s.of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("slm-server-env"))
    data: dict[str, str] = config["data"]
    return data


def test_the_chart_runs_sentinels_that_can_outvote_a_lost_node() -> None:
    chart = values()
    assert chart["architecture"] == "replication" and chart["sentinel"]["enabled"] is True
    nodes = chart["replica"]["replicaCount"]
    quorum = chart["sentinel"]["quorum"]
    assert nodes >= 3 and nodes // 2 < quorum <= nodes - 1, "a majority must agree, and one lost node must not block"
    assert chart["replica"]["podAntiAffinityPreset"] == "hard", "two nodes on one machine: one loss takes both"
    assert "maxmemory-policy noeviction" in chart["commonConfiguration"], "an evicted entry is a lost request"
    assert chart["auth"]["enabled"] and chart["auth"]["sentinel"]


def test_gateway_and_workers_ask_the_charts_sentinels_for_its_master() -> None:
    objects = k8s.render(HA)
    chart = values()
    env = env_of(objects)
    settings = Settings.model_validate({k[len("SLM_"):].lower(): v for k, v in env.items() if k.startswith("SLM_")})
    target = settings.redis_target()
    assert target.master == chart["sentinel"]["masterSet"]
    (host, port), = parse_sentinels(env["SLM_REDIS_SENTINELS"])
    assert host.split(".")[:2] == [RELEASE, "slm-server"] and port == chart["sentinel"]["service"]["ports"]["sentinel"]
    secret = chart["auth"]["existingSecret"], chart["auth"]["existingSecretPasswordKey"]
    deployments = k8s.of_kind(objects, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} >= {"gateway"} and len(deployments) >= 2
    for deployment in deployments:
        (container,) = k8s.pod_spec(deployment)["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}
        for name in ("SLM_REDIS_PASSWORD", "SLM_REDIS_SENTINEL_PASSWORD"):
            assert (refs[name]["name"], refs[name]["key"]) == secret, (deployment["metadata"]["name"], name)


def test_no_single_redis_is_left_beside_the_chart() -> None:
    objects = k8s.render(HA)
    assert not [o for o in objects if o["kind"] == "StatefulSet"]
    assert not [o for o in objects if o["metadata"]["name"] in (RELEASE, f"{RELEASE}-headless")], \
        "the chart owns the `redis` services"


def test_keda_reads_the_streams_through_the_sentinels() -> None:
    objects = k8s.render(HA)
    chart = values()
    auths = {o["metadata"]["name"]: o for o in k8s.of_kind(objects, "TriggerAuthentication")}
    scaled = k8s.of_kind(objects, "ScaledObject")
    assert scaled
    for obj in scaled:
        types = sorted(t["type"] for t in obj["spec"]["triggers"])
        assert types == ["redis-sentinel", "redis-sentinel-streams", "redis-sentinel-streams"]  # doorbell, streams
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert "address" not in meta
            assert meta["sentinelMaster"] == chart["sentinel"]["masterSet"]
            assert parse_sentinels(meta["addresses"]) == parse_sentinels(env_of(objects)["SLM_REDIS_SENTINELS"])
            refs = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert {r["parameter"] for r in refs} == {"password", "sentinelPassword"}
            assert all(r["name"] == chart["auth"]["existingSecret"] for r in refs)
