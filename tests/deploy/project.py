"""Paths of deploy/ and what it must agree with: the CLI, settings, pyproject, grafana/."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERFILE_GPU = DEPLOY / "docker" / "Dockerfile.gpu"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus.yml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
SYNC_SCRIPT = K8S / "sync_monitoring.py"

GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "slm-server.json"
ALERT_RULES = GRAFANA / "alerts" / "slm-server-rules.yaml"
DATASOURCE_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "provider.yaml"
DEFAULT_REGISTRY = ROOT / "model_registry.yaml"

# `slm-server` subcommands (the contract of server/cli.py). known_subcommands() is the one place
# to swap for introspection of the CLI's argparse parser.
SUBCOMMANDS = frozenset({"serve", "gateway", "worker", "registry", "bench", "compare"})

# Scrape job names grafana/alerts and the dashboard rely on.
GATEWAY_JOB = "slm-gateway"
WORKER_JOB = "slm-worker"

# Registry fields only a worker reads (how it loads and runs its model). Everything else must be
# equal between the registry the gateway reads and one that only GPU workers read.
WORKER_SIDE_FIELDS = frozenset({"n_gpu_layers", "parallel", "n_threads", "n_batch"})

# The longest generation deploy/ must let finish on shutdown (grace periods exceed it).
GENERATION_BUDGET_S = 180


def known_subcommands() -> frozenset[str]:
    return SUBCOMMANDS


def cli_subcommands() -> frozenset[str]:
    """The subcommands server/cli.py's argparse parser really has."""
    import argparse

    from server.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return frozenset(action.choices)


def command_problems(
    argv: Sequence[str], subcommands: Collection[str], models: Collection[str] | None = None
) -> list[str]:
    """What is wrong with `slm-server ARGV`, checked against the CLI's subcommands.

    `worker` must name its model with `--model NAME` (one of `models` when given); `registry`
    takes `check`.
    """
    if not argv:
        return ["no subcommand (the image's default would run instead)"]
    head, rest = argv[0], list(argv[1:])
    if head not in subcommands:
        return [f"`{head}` is not an slm-server subcommand (known: {', '.join(sorted(subcommands))})"]
    problems = []
    if head == "worker":
        if "--model" not in rest or rest.index("--model") + 1 >= len(rest):
            problems.append("`worker` without `--model NAME`")
        else:
            model = rest[rest.index("--model") + 1]
            if models is not None and model not in models:
                problems.append(f"`worker --model {model}`: no local model `{model}` in the registry")
    if head == "registry" and rest[:1] != ["check"]:
        problems.append("`registry` without `check`")
    return problems


@cache
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def project_version() -> str:
    return str(pyproject()["project"]["version"])


def pinned_version(distribution: str) -> str | None:
    """The `==` pin of a dependency in pyproject.toml, if any."""
    for requirement in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(rf"\s*{re.escape(distribution)}\s*==\s*([^\s;,]+)\s*", requirement)
        if match:
            return match.group(1)
    return None


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_job_names() -> set[str]:
    """Values of `job="..."` in the alert rules."""
    return set(re.findall(r'job="([^"]+)"', ALERT_RULES.read_text(encoding="utf-8")))


def without_worker_side(models: dict[str, Any]) -> dict[str, Any]:
    return {name: {k: v for k, v in e.items() if k not in WORKER_SIDE_FIELDS} for name, e in models.items()}
