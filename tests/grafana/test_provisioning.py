"""Grafana provisioning: the datasource the dashboard defaults to, and the dashboard provider."""

from __future__ import annotations

from .dashboard import (
    DASHBOARD_PATH,
    DASHBOARD_PROVISIONING,
    DATASOURCE_PROVISIONING,
    load_dashboard,
    load_yaml,
)


def test_prometheus_datasource_has_a_fixed_uid_and_is_default() -> None:
    config = load_yaml(DATASOURCE_PROVISIONING)
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["access"] == "proxy"
    assert datasource["isDefault"] is True


def test_dashboard_datasource_variable_defaults_to_the_provisioned_uid() -> None:
    (datasource,) = load_yaml(DATASOURCE_PROVISIONING)["datasources"]
    variable = next(v for v in load_dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["current"]["value"] == datasource["uid"]
    assert variable["query"] == datasource["type"]


def test_dashboard_provider_loads_json_files_from_the_documented_path() -> None:
    config = load_yaml(DASHBOARD_PROVISIONING)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD_PATH.suffix == ".json"
    assert DASHBOARD_PATH.parent.name == "dashboards"
