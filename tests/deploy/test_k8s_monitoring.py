"""ServiceMonitors, the PrometheusRule and the dashboard ConfigMap agree with grafana/."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from . import k8s
from .project import (
    ALERT_RULES,
    DASHBOARD,
    GATEWAY_JOB,
    K8S,
    SYNC_SCRIPT,
    WORKER_JOB,
    alert_job_names,
    load_yaml,
)

TARGETS = k8s.all_targets()
# kubectl apply (client side) keeps the whole object in an annotation limited to 256 KiB.
LAST_APPLIED_LIMIT = 262_144


def ids(path: Path) -> str:
    return str(path.relative_to(K8S))


@pytest.fixture(params=TARGETS, ids=ids)
def objects(request: pytest.FixtureRequest) -> list[k8s.Obj]:
    return k8s.render(request.param)


def sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_monitoring", SYNC_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_service_monitors_scrape_gateway_and_workers_under_the_alerts_job_names(objects: list[k8s.Obj]) -> None:
    jobs = {}
    for monitor in k8s.of_kind(objects, "ServiceMonitor"):
        spec = monitor["spec"]
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        services = [
            s for s in k8s.of_kind(objects, "Service")
            if k8s.selects(spec["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]  # fmt: skip
        assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services"
        (service,) = services
        job = service["metadata"]["labels"][spec["jobLabel"]]
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        jobs[job] = service
    assert set(jobs) == {GATEWAY_JOB, WORKER_JOB} == alert_job_names()
    workers = [d for d in k8s.of_kind(objects, "Deployment") if k8s.worker_model(d)]
    for deployment in workers:
        assert k8s.selects(jobs[WORKER_JOB]["spec"]["selector"], k8s.pod_labels(deployment))
    gateway = k8s.one(objects, "Deployment", "gateway")
    assert k8s.selects(jobs[GATEWAY_JOB]["spec"]["selector"], k8s.pod_labels(gateway))
    assert not k8s.selects(jobs[WORKER_JOB]["spec"]["selector"], k8s.pod_labels(gateway))


def test_dashboard_configmap_is_grafanas_dashboard(objects: list[k8s.Obj]) -> None:
    dashboards = [
        c for c in k8s.of_kind(objects, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert len(dashboards) == 1
    (config_map,) = dashboards
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["name"] == "slm-server-dashboard", "a hash suffix leaves stale copies"
    assert list(config_map["data"]) == [DASHBOARD.name]
    assert json.loads(config_map["data"][DASHBOARD.name]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert len(json.dumps(config_map)) < LAST_APPLIED_LIMIT - 4096


def test_prometheus_rule_carries_grafanas_alerts(objects: list[k8s.Obj]) -> None:
    (rule,) = k8s.of_kind(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == load_yaml(ALERT_RULES)


def test_copies_of_grafana_files_are_current() -> None:
    stale = sync_module().stale()
    assert stale == [], "run: python deploy/k8s/sync_monitoring.py"


def test_prometheus_rule_generator_keeps_the_rules() -> None:
    text = (
        "# comment\ngroups:\n  - name: g\n    rules:\n"
        "      - alert: A\n        expr: |\n          up\n\n          == 0\n"
    )
    rendered = yaml.safe_load(sync_module().prometheus_rule(text))
    assert rendered["kind"] == "PrometheusRule"
    assert rendered["spec"] == yaml.safe_load(text)
