"""Render deploy/k8s with `kubectl kustomize` and look into the objects it yields."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from .project import K8S, K8S_BASE

Obj = dict[str, Any]

KUBECTL_HINT = (
    "needs `kubectl` >= 1.27 (kustomize v5) on PATH. Debian bookworm has no `kubectl` package and "
    "its `kubernetes-client` (1.20, kustomize v2) cannot render this; install the `kubectl` package "
    "from https://pkgs.k8s.io (or Google Cloud SDK's apt repository), or the release binary."
)
MIN_KUSTOMIZE = (5, 0)


@cache
def kubectl() -> str:
    """Path of a kubectl whose kustomize is new enough; fails the test (never skips) otherwise."""
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(f"`kubectl` is not on PATH: this test {KUBECTL_HINT}", pytrace=False)
    out = subprocess.run([path, "version", "--client"], capture_output=True, text=True, timeout=30, check=False).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_KUSTOMIZE:
        pytest.fail(f"{path} reports {out.strip()!r}: this test {KUBECTL_HINT}", pytrace=False)
    return path


@cache
def render_text(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{result.stderr}", pytrace=False)
    return result.stdout


def render(directory: Path) -> list[Obj]:
    """The objects of a kustomization (a fresh copy each call: tests may not share mutations)."""
    return [obj for obj in yaml.safe_load_all(render_text(directory)) if obj]


def overlay(name: str) -> Path:
    return K8S / "overlays" / name


def all_targets() -> list[Path]:
    return [K8S_BASE, overlay("cpu"), overlay("gpu")]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment: envFrom ConfigMaps of the render, then `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            found = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == ref["name"]]
            assert found or ref.get("optional"), f"envFrom names a missing ConfigMap {ref['name']}"
            for config_map in found:
                env.update(config_map.get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port}")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def worker_model(deployment: Obj) -> str | None:
    """`NAME` of `worker --model NAME` in a Deployment's first container, if it is a worker."""
    args = pod_spec(deployment)["containers"][0].get("args", [])
    if args[:1] == ["worker"] and "--model" in args:
        return str(args[args.index("--model") + 1])
    return None


REGISTRY_CONFIGMAP = "slm-server-registry"


def registry_configmap(objects: list[Obj]) -> Obj:
    return one(objects, "ConfigMap", REGISTRY_CONFIGMAP)


def registry(objects: list[Obj]) -> dict[str, Any]:
    """The model registry the render ships (parsed YAML of the ConfigMap's only key)."""
    (text,) = registry_configmap(objects)["data"].values()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def local_models(objects: list[Obj]) -> dict[str, dict[str, Any]]:
    return {
        name: entry for name, entry in registry(objects)["models"].items() if entry.get("backend", "local") == "local"
    }


def slm_containers(objects: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, container) for every container running the slm-server image."""
    return [
        (w, c)
        for w in workloads(objects)
        for c in containers(w)
        if c["image"].split(":")[0].split("/")[-1].startswith("slm-server")
    ]


def role(container: Obj) -> str:
    return str(container.get("args", ["?"])[0])


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def bytes_of(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)
