"""grafana/alerts/slm-server-rules.yaml: valid for promtool, unit-tested, and only exported metrics."""

from __future__ import annotations

import pytest

from . import promtool
from .dashboard import ALERT_RULES_PATH, ALERT_TESTS_PATH, Json, alert_rules, load_yaml
from .exported_metrics import series_labels
from .promql import labels_in_expr, names_in_expr

RULES = alert_rules()


def test_promtool_check_rules_passes() -> None:
    result = promtool.check_rules(ALERT_RULES_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool.run("test", "rules", ALERT_TESTS_PATH.name, cwd=ALERT_TESTS_PATH.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_issue_s_alerts_exist() -> None:
    assert {rule["alert"] for rule in RULES} == {
        "SLMTimeToFirstTokenP99High",
        "SLMErrorRatioHigh",
        "SLMQueueDepthHigh",
        "SLMNoWorkersReady",
        "SLMWorkerDown",
        "SLMWorkersAbsent",
        "SLMGatewayDown",
    }


def test_every_alert_is_unit_tested() -> None:
    tested = {
        case["alertname"]
        for test in promtool_tests()
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in RULES} <= tested


def promtool_tests() -> list[Json]:
    tests: list[Json] = load_yaml(ALERT_TESTS_PATH)["tests"]
    return tests


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_and_a_pending_period(rule: Json) -> None:
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"]
    assert rule["annotations"]["description"]
    assert rule["for"]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_alert_names_only_exported_metrics_and_labels(rule: Json) -> None:
    names = names_in_expr(rule["expr"])
    assert names
    for name, labels in labels_in_expr(rule["expr"]).items():
        carried = series_labels(name)
        assert carried is not None, f"{name} is not exported"
        assert labels <= carried, f"{name} has no label {sorted(labels - carried)}"
