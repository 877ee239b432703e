"""Gateway, workers and Redis in the rendered manifests: wiring, probes, shutdown, security."""

from __future__ import annotations

import posixpath
from pathlib import Path

import pytest

from . import dockerfile, k8s
from .project import (
    DOCKERFILE,
    GENERATION_BUDGET_S,
    K8S,
    command_problems,
    known_subcommands,
    project_version,
)

TARGETS = k8s.all_targets()


def ids(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(params=TARGETS, ids=ids)
def objects(request: pytest.FixtureRequest) -> list[k8s.Obj]:
    return k8s.render(request.param)


def test_every_workload_selector_matches_its_pod_template(objects: list[k8s.Obj]) -> None:
    for workload in k8s.workloads(objects):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert k8s.selects(selector, k8s.pod_labels(workload)), workload["metadata"]["name"]


def test_every_service_reaches_a_named_container_port(objects: list[k8s.Obj]) -> None:
    for service in k8s.of_kind(objects, "Service"):
        backends = [w for w in k8s.workloads(objects) if k8s.selects(service["spec"]["selector"], k8s.pod_labels(w))]
        assert backends, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for workload in backends:
                assert any(
                    p.get("name") == port["targetPort"] or p["containerPort"] == port["targetPort"]
                    for c in k8s.containers(workload)
                    for p in c.get("ports", [])
                ), f"Service {service['metadata']['name']} port {port['name']} -> {workload['metadata']['name']}"


def test_statefulset_has_its_headless_service(objects: list[k8s.Obj]) -> None:
    for statefulset in k8s.of_kind(objects, "StatefulSet"):
        service = k8s.one(objects, "Service", statefulset["spec"]["serviceName"])
        assert service["spec"].get("clusterIP") == "None"


def test_referenced_configmaps_and_volumes_exist(objects: list[k8s.Obj]) -> None:
    config_maps = {c["metadata"]["name"] for c in k8s.of_kind(objects, "ConfigMap")}
    for workload in k8s.workloads(objects):
        volumes = {v["name"]: v for v in k8s.pod_spec(workload).get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, volume
        for container in k8s.containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims, mount
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref is not None:
                    assert ref["name"] in config_maps or ref.get("optional"), ref


def test_registry_is_a_directory_mount_that_slm_registry_points_into(objects: list[k8s.Obj]) -> None:
    config_map = k8s.registry_configmap(objects)
    assert list(config_map["data"]) == ["model_registry.yaml"]
    assert config_map["metadata"]["name"] == k8s.REGISTRY_CONFIGMAP, "a hash suffix would defeat hot reload"
    pairs = k8s.slm_containers(objects)
    assert {k8s.role(c) for _, c in pairs} == {"gateway", "worker"}
    for workload, container in pairs:
        registry_path = k8s.container_env(objects, container)["SLM_REGISTRY"]
        volumes = {v["name"]: v for v in k8s.pod_spec(workload)["volumes"]}
        (mount,) = [
            m
            for m in container["volumeMounts"]
            if volumes[m["name"]].get("configMap", {}).get("name") == k8s.REGISTRY_CONFIGMAP
        ]
        assert "subPath" not in mount and "subPathExpr" not in mount, "subPath mounts never update"
        assert mount.get("readOnly") is True
        assert posixpath.dirname(registry_path) == mount["mountPath"]
        assert posixpath.basename(registry_path) in config_map["data"]


def test_no_configmap_or_secret_is_mounted_with_subpath(objects: list[k8s.Obj]) -> None:
    for workload in k8s.workloads(objects):
        volumes = {v["name"]: v for v in k8s.pod_spec(workload).get("volumes", [])}
        for container in k8s.containers(workload):
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"], {})
                if {"configMap", "secret", "projected"} & set(volume):
                    assert "subPath" not in mount, (workload["metadata"]["name"], mount)


def test_commands_are_slm_server_subcommands_of_registry_models(objects: list[k8s.Obj]) -> None:
    models = k8s.local_models(objects)
    for _, container in k8s.slm_containers(objects):
        assert "command" not in container, "`command` would replace the image's tini entrypoint"
        assert command_problems(container["args"], known_subcommands(), models) == []


def test_each_local_model_has_exactly_one_worker_deployment(objects: list[k8s.Obj]) -> None:
    served = [k8s.worker_model(d) for d in k8s.of_kind(objects, "Deployment") if k8s.worker_model(d)]
    assert sorted(served) == sorted(k8s.local_models(objects))
    for deployment in k8s.of_kind(objects, "Deployment"):
        model = k8s.worker_model(deployment)
        if model:
            assert k8s.pod_labels(deployment)["slm-server/model"] == model
            assert deployment["spec"]["selector"]["matchLabels"]["slm-server/model"] == model


def test_model_dirs_are_mounted_where_the_readme_patches_them(objects: list[k8s.Obj]) -> None:
    # Gateway and workers both resolve the registry's GGUF paths, so both mount SLM_MODEL_DIRS;
    # deploy/README.md swaps that emptyDir for a PVC with a JSON patch on /volumes/1.
    for workload, container in k8s.slm_containers(objects):
        assert k8s.pod_spec(workload)["volumes"][1]["name"] == "models"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount.get("readOnly") is True
        env = k8s.container_env(objects, container)
        assert env["SLM_MODEL_DIRS"].split(":") == [mount["mountPath"]]


def test_home_cache_is_writable(objects: list[k8s.Obj]) -> None:
    # a model shipped in parts is assembled into ~/.cache on first use (read-only root elsewhere)
    for workload, container in k8s.slm_containers(objects):
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in k8s.pod_spec(workload)["volumes"]}
        assert "emptyDir" in volumes[mounts["/home/slm/.cache"]], workload["metadata"]["name"]


def test_probes_startup_readiness_liveness(objects: list[k8s.Obj]) -> None:
    for _, container in k8s.slm_containers(objects):
        env = k8s.container_env(objects, container)
        port = int(env["SLM_PORT"] if k8s.role(container) == "gateway" else env["SLM_WORKER_PORT"])
        assert port != 0
        assert [p["containerPort"] for p in container["ports"]] == [port]
        probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        for probe in probes.values():
            assert k8s.port_number(container, probe["httpGet"]["port"]) == port
        assert probes["readiness"]["httpGet"]["path"] == "/ready"
        assert probes["liveness"]["httpGet"]["path"] == "/health"
        startup = probes["startup"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        if k8s.role(container) == "worker":
            # readiness is "model loaded": the startup probe must wait for a slow load
            assert startup["httpGet"]["path"] == "/ready"
            assert budget >= 300, f"{budget} s to load a model"
        else:
            assert budget >= 60


def test_shutdown_outlasts_a_generation(objects: list[k8s.Obj]) -> None:
    for workload, container in k8s.slm_containers(objects):
        grace = k8s.pod_spec(workload)["terminationGracePeriodSeconds"]
        assert grace > GENERATION_BUDGET_S, (workload["metadata"]["name"], grace)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        if pre_stop:
            assert int(pre_stop[-1]) < grace


def test_pods_run_as_the_image_user_without_privileges(objects: list[k8s.Obj]) -> None:
    image_user = dockerfile.parse(DOCKERFILE).final.last("USER")
    assert image_user is not None
    uid = int(image_user.value.split(":")[0])
    for workload in k8s.workloads(objects):
        pod = k8s.pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        for container in k8s.containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            if context.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts or k8s.role(container) not in ("gateway", "worker")
    for workload, _ in k8s.slm_containers(objects):
        assert k8s.pod_spec(workload)["securityContext"]["runAsUser"] == uid


def test_every_container_has_requests_and_a_memory_limit(objects: list[k8s.Obj]) -> None:
    for workload in k8s.workloads(objects):
        for container in k8s.containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
            assert k8s.bytes_of(resources["limits"]["memory"]) >= k8s.bytes_of(resources["requests"]["memory"])


def test_worker_cpu_request_covers_the_registry_threads(objects: list[k8s.Obj]) -> None:
    models = k8s.local_models(objects)
    for deployment in k8s.of_kind(objects, "Deployment"):
        model = k8s.worker_model(deployment)
        if model:
            cpu = k8s.cpu_cores(k8s.pod_spec(deployment)["containers"][0]["resources"]["requests"]["cpu"])
            threads = models[model].get("n_threads")
            assert threads is not None, f"{model}: n_threads unset means every core of the node"
            assert threads <= cpu, f"{model}: {threads} threads on a {cpu}-core request"


def test_images_are_pinned_to_the_project_version(objects: list[k8s.Obj]) -> None:
    for _, container in k8s.slm_containers(objects):
        name, _, tag = container["image"].rpartition(":")
        assert tag == project_version(), container["image"]
        expected = "slm-server-gpu" if "nvidia.com/gpu" in container["resources"].get("limits", {}) else "slm-server"
        assert name.split("/")[-1] == expected, container["image"]
    for workload in k8s.workloads(objects):
        for container in k8s.containers(workload):
            assert ":" in container["image"] and not container["image"].endswith(":latest")


def test_redis_is_durable_and_never_evicts(objects: list[k8s.Obj]) -> None:
    redis = k8s.one(objects, "StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:7")
    args = container["args"]
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert k8s.bytes_of(options["--maxmemory"].replace("mb", "Mi").replace("gb", "Gi")) < k8s.bytes_of(
        container["resources"]["limits"]["memory"]
    ), "maxmemory must leave room below the container limit (AOF rewrite, buffers)"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {claim["metadata"]["name"]: "/data"}


def test_slm_redis_url_names_the_redis_service(objects: list[k8s.Obj]) -> None:
    service = k8s.one(objects, "Service", "redis")
    for _, container in k8s.slm_containers(objects):
        url = k8s.container_env(objects, container)["SLM_REDIS_URL"]
        assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"


def test_only_slm_pods_and_keda_reach_redis(objects: list[k8s.Obj]) -> None:
    (policy,) = k8s.of_kind(objects, "NetworkPolicy")
    redis = k8s.one(objects, "StatefulSet", "redis")
    assert k8s.selects(policy["spec"]["podSelector"]["matchLabels"], k8s.pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    pod_selectors = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    for workload, _ in k8s.slm_containers(objects):
        assert any(k8s.selects(s, k8s.pod_labels(workload)) for s in pod_selectors), workload["metadata"]["name"]
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in rule["from"] if "namespaceSelector" in p]
    assert {"kubernetes.io/metadata.name": "keda"} in namespaces
    assert [p["port"] for p in rule["ports"]] == [6379]
