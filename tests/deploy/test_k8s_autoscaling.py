"""KEDA ScaledObjects on the Redis streams, the gateway's HPA, and the disruption budgets."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.queue import keys

from . import k8s
from .project import K8S

TARGETS = k8s.all_targets()
NAMESPACE = "slm-server"

# Trigger metadata the redis-streams scaler reads (KEDA v2.20 pkg/scalers/redis_streams_scaler.go
# and redis_scaler.go's connection fields); anything else is silently ignored by KEDA.
REDIS_STREAMS_METADATA = frozenset(
    {
        "stream", "consumerGroup", "lagCount", "pendingEntriesCount", "streamLength",
        "activationLagCount", "databaseIndex", "enableTLS", "unsafeSsl",
        "address", "addresses", "host", "hosts", "port", "ports", "username", "password",
        "addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv", "passwordFromEnv",
    }
)  # fmt: skip


def ids(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(params=TARGETS, ids=ids)
def objects(request: pytest.FixtureRequest) -> list[k8s.Obj]:
    return k8s.render(request.param)


def scaled_object_for(objects: list[k8s.Obj], deployment: k8s.Obj) -> k8s.Obj:
    found = [
        s
        for s in k8s.of_kind(objects, "ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    ]
    assert len(found) == 1, f"{deployment['metadata']['name']}: {len(found)} ScaledObjects"
    return found[0]


def test_one_scaled_object_per_local_model_on_its_stream(objects: list[k8s.Obj]) -> None:
    models = k8s.local_models(objects)
    redis = k8s.one(objects, "Service", "redis")
    address = f"{redis['metadata']['name']}.{NAMESPACE}.svc:{redis['spec']['ports'][0]['port']}"
    workers = [d for d in k8s.of_kind(objects, "Deployment") if k8s.worker_model(d)]
    assert len(k8s.of_kind(objects, "ScaledObject")) == len(workers) == len(models)
    for deployment in workers:
        model = k8s.worker_model(deployment)
        assert model is not None
        scaled = scaled_object_for(objects, deployment)
        assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        triggers = scaled["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis-streams", "redis"}
        # the fair queue's waiting requests are off the stream: its doorbell list counts them
        (waiting,) = [t for t in triggers if t["type"] == "redis"]
        assert waiting["metadata"]["listName"] == keys.fair_queue(model) + "bell"
        assert waiting["metadata"]["address"] == address
        for trigger in (t for t in triggers if t["type"] == "redis-streams"):
            metadata = trigger["metadata"]
            assert set(metadata) <= REDIS_STREAMS_METADATA, set(metadata) - REDIS_STREAMS_METADATA
            assert metadata["stream"] == keys.request_stream(model)
            assert metadata["consumerGroup"] == keys.GROUP
            # KEDA's operator dials Redis from its own namespace: a short name would not resolve.
            assert metadata["address"] == address


def test_backlog_and_in_flight_triggers_match_the_model(objects: list[k8s.Obj]) -> None:
    models = k8s.local_models(objects)
    for deployment in k8s.of_kind(objects, "Deployment"):
        model = k8s.worker_model(deployment)
        if not model:
            continue
        metadata = {t["name"]: t["metadata"] for t in scaled_object_for(objects, deployment)["spec"]["triggers"]}
        assert set(metadata) == {"backlog", "in-flight", "waiting"}
        assert int(metadata["waiting"]["listLength"]) >= 1
        assert int(metadata["backlog"]["lagCount"]) >= 1
        assert "pendingEntriesCount" not in metadata["backlog"], "with lagCount set KEDA would ignore it"
        # One replica per `parallel` requests running: busy workers are not scaled in.
        assert int(metadata["in-flight"]["pendingEntriesCount"]) == models[model]["parallel"]
        assert "lagCount" not in metadata["in-flight"]


def test_boot_models_keep_a_warm_replica_and_on_demand_ones_scale_to_zero(objects: list[k8s.Obj]) -> None:
    # The gateway's /ready needs a ready worker for every `load: boot` model: scaling one to zero would
    # take every gateway pod out of its Service. An on-demand model's requests wait in its stream while
    # KEDA activates its Deployment (lag above activationLagCount), and it goes back to zero after its
    # idle_unload_s without one (cooldownPeriod).
    models = k8s.local_models(objects)
    on_demand = 0
    for deployment in k8s.of_kind(objects, "Deployment"):
        model = k8s.worker_model(deployment)
        if not model:
            continue
        scaled = scaled_object_for(objects, deployment)
        spec = scaled["spec"]
        assert spec["maxReplicaCount"] >= max(1, spec["minReplicaCount"])
        assert spec["pollingInterval"] <= 15
        entry = models[model]
        if entry.get("load", "boot") == "on_demand":
            on_demand += 1
            assert spec["minReplicaCount"] == 0, scaled["metadata"]["name"]
            assert spec["cooldownPeriod"] == entry["idle_unload_s"]
            backlog = next(t for t in spec["triggers"] if t["name"] == "backlog")
            assert backlog["metadata"]["activationLagCount"] == "0"
            waiting = next(t for t in spec["triggers"] if t["name"] == "waiting")
            assert waiting["metadata"]["activationListLength"] == "0"  # the first request rings the bell
        else:
            assert spec["minReplicaCount"] >= 1, scaled["metadata"]["name"]
            assert entry.get("idle_unload_s") is None, f"{model}: a boot model's KEDA floor keeps it loaded"
    assert on_demand >= 1, "the shipped registry shows scale to zero with one on-demand model"


def test_keda_owns_worker_replicas(objects: list[k8s.Obj]) -> None:
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in k8s.of_kind(objects, "HorizontalPodAutoscaler")}
    for deployment in k8s.of_kind(objects, "Deployment"):
        if k8s.worker_model(deployment):
            assert "replicas" not in deployment["spec"], "apply would fight KEDA over the count"
            assert deployment["metadata"]["name"] not in hpa_targets


def test_gateway_autoscales_and_survives_drains(objects: list[k8s.Obj]) -> None:
    gateway = k8s.one(objects, "Deployment", "gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the count"
    (hpa,) = k8s.of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    (cpu,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert cpu["resource"]["name"] == "cpu"
    assert "cpu" in k8s.pod_spec(gateway)["containers"][0]["resources"]["requests"], "utilization needs a request"
    pdb = k8s.one(objects, "PodDisruptionBudget", "gateway")
    assert k8s.selects(pdb["spec"]["selector"]["matchLabels"], k8s.pod_labels(gateway))
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain could never evict"


def test_each_worker_deployment_has_its_own_disruption_budget(objects: list[k8s.Obj]) -> None:
    budgets = k8s.of_kind(objects, "PodDisruptionBudget")
    for deployment in k8s.of_kind(objects, "Deployment"):
        if k8s.worker_model(deployment):
            matching = [
                b for b in budgets if k8s.selects(b["spec"]["selector"]["matchLabels"], k8s.pod_labels(deployment))
            ]
            assert len(matching) == 1, deployment["metadata"]["name"]
            assert matching[0]["spec"]["maxUnavailable"] == 1
    for budget in budgets:
        selected = [
            w
            for w in k8s.workloads(objects)
            if k8s.selects(budget["spec"]["selector"]["matchLabels"], k8s.pod_labels(w))
        ]
        assert len(selected) == 1, f"PDB {budget['metadata']['name']} spans {len(selected)} workloads"
