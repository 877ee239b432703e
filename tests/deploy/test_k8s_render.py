"""Every kustomization renders offline and every object is valid for Kubernetes and its CRDs."""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from . import k8s
from .project import K8S, ROOT, load_yaml
from .schema_validation import crd_schemas, kubernetes_versions, validate

TARGETS = k8s.all_targets()
NAMESPACE = "slm-server"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CLUSTER_SCOPED = {"Namespace"}


def ids(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_kustomization_renders_with_unique_objects(target: Path) -> None:
    objects = k8s.render(target)
    assert len(objects) > 10
    keys = Counter((o["kind"], o["metadata"]["name"]) for o in objects)
    assert [k for k, n in keys.items() if n > 1] == []


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_every_object_is_valid(target: Path, version: str) -> None:
    problems = [p for obj in k8s.render(target) for p in validate(obj, version)]
    assert problems == []


def test_custom_resources_are_validated_against_their_crds() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for t in TARGETS for o in k8s.render(t)}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds
    assert ("monitoring.coreos.com/v1", "ServiceMonitor") in kinds
    assert ("monitoring.coreos.com/v1", "PrometheusRule") in kinds
    assert set(crd_schemas()) <= kinds, "a stored CRD schema that nothing uses"


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("ScaledObject", lambda o: o["spec"].update(minReplicaCout=1), "minReplicaCout"),
        ("ScaledObject", lambda o: o["spec"]["triggers"][0]["metadata"].update(lagCount=4), "not of type"),
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(intervall="5s"), "intervall"),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(exp="up"), "exp"),
        ("Deployment", lambda o: k8s.pod_spec(o)["containers"][0].update(readinessprobe={}), "readinessprobe"),
        ("HorizontalPodAutoscaler", lambda o: o["spec"].update(minReplicas="2"), "not of type"),
        ("ScaledObject", lambda o: o["metadata"]["labels"].update(broken=1), "not of type"),
    ],
)
def test_validation_rejects_mistakes(kind: str, mutate: Callable[[k8s.Obj], None], expected: str) -> None:
    obj = copy.deepcopy(k8s.of_kind(k8s.render(k8s.overlay("cpu")), kind)[0])
    assert validate(obj, kubernetes_versions()[0]) == []
    mutate(obj)
    problems = validate(obj, kubernetes_versions()[0])
    assert problems and expected in problems[0]


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_everything_lives_in_one_namespace(target: Path) -> None:
    objects = k8s.render(target)
    assert [o["metadata"]["name"] for o in k8s.of_kind(objects, "Namespace")] == [NAMESPACE]
    misplaced = [
        (o["kind"], o["metadata"]["name"])
        for o in objects
        if o["kind"] not in CLUSTER_SCOPED and o["metadata"].get("namespace") != NAMESPACE
    ]
    assert misplaced == []


@pytest.mark.parametrize("target", TARGETS, ids=ids)
def test_names_are_dns_labels(target: Path) -> None:
    # Services, and the Deployments whose pod names derive from them, need RFC 1123 labels.
    bad = [o["metadata"]["name"] for o in k8s.render(target) if not DNS_LABEL.match(o["metadata"]["name"])]
    too_long = [o["metadata"]["name"] for o in k8s.render(target) if len(o["metadata"]["name"]) > 52]
    assert bad == []
    assert too_long == [], "names over 52 characters leave no room for ReplicaSet/pod suffixes"


def referenced_paths(kustomization: dict[str, Any]) -> list[str]:
    paths = [str(r) for r in kustomization.get("resources", [])]
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        paths += [str(f).split("=", 1)[-1] for f in generator.get("files", [])]
    paths += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
    paths += [str(c) for c in kustomization.get("configurations", [])]
    return paths


def test_kustomizations_read_no_file_outside_deploy_k8s() -> None:
    # kustomize's load restrictor refuses such files; this names the file when it happens.
    checked = 0
    for kustomization in K8S.rglob("kustomization.yaml"):
        for reference in referenced_paths(load_yaml(kustomization)):
            resolved = (kustomization.parent / reference).resolve()
            where = f"{kustomization.relative_to(ROOT)}: {reference}"
            assert resolved.is_relative_to(K8S), f"{where} is outside deploy/k8s"
            assert resolved.exists(), f"{where} does not exist"
            checked += 1
    assert checked > 20
