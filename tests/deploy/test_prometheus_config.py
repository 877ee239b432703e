"""deploy/compose/prometheus.yml scrapes what compose runs, under the job names the alerts use."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import compose
from .project import (
    ALERT_RULES,
    DATASOURCE_PROVISIONING,
    GATEWAY_JOB,
    PROMETHEUS_CONFIG,
    WORKER_JOB,
    alert_job_names,
    load_yaml,
)

PORT_SETTING = {GATEWAY_JOB: "SLM_PORT", WORKER_JOB: "SLM_WORKER_PORT"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(PROMETHEUS_CONFIG)
    return data


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return compose.load()


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_job_names_are_the_ones_the_alerts_use(config: dict[str, Any]) -> None:
    assert alert_job_names() == {GATEWAY_JOB, WORKER_JOB}
    assert alert_job_names() <= set(jobs(config))


def test_targets_are_compose_services_on_their_configured_ports(config: dict[str, Any], spec: dict[str, Any]) -> None:
    covered = set()
    for job_name, setting in PORT_SETTING.items():
        (discovery,) = jobs(config)[job_name]["dns_sd_configs"]
        assert discovery["type"] == "A", "one A record per scaled container"
        for service_name in discovery["names"]:
            service = spec["services"][service_name]
            assert int(str(compose.effective_environment(service)[setting])) == discovery["port"], service_name
            covered.add(service_name)
        assert jobs(config)[job_name].get("metrics_path", "/metrics") == "/metrics"
    assert covered == set(compose.slm_services(spec)), "every slm-server container is scraped"
    roles = {compose.command(spec["services"][n])[0] for n in jobs(config)[WORKER_JOB]["dns_sd_configs"][0]["names"]}
    assert roles == {"worker"}


def test_rules_are_grafanas_alerts_mounted_into_prometheus(config: dict[str, Any], spec: dict[str, Any]) -> None:
    mounts = {m.target: Path(m.source) for m in compose.mounts(spec["services"]["prometheus"]) if m.bind}
    assert mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONFIG.resolve()
    (rule_file,) = config["rule_files"]
    directory, name = rule_file.rsplit("/", 1)
    assert mounts[directory] / name == ALERT_RULES.resolve()


def test_scrape_interval_matches_grafanas_datasource(config: dict[str, Any], spec: dict[str, Any]) -> None:
    (datasource,) = load_yaml(DATASOURCE_PROVISIONING)["datasources"]
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in spec["services"]
    assert any(p.endswith(":9090") for p in spec["services"]["prometheus"]["ports"])


def test_promtool_accepts_the_config(config: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("`promtool` is not on PATH: install Debian's `prometheus` package", pytrace=False)
    local = dict(config, rule_files=[str(ALERT_RULES)])
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
