"""deploy/compose/compose.yaml: valid Compose, the right services, commands, mounts and ports."""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from . import compose
from .project import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    DASHBOARD_PROVISIONING,
    GENERATION_BUDGET_S,
    GRAFANA,
    SUBCOMMANDS,
    known_subcommands,
    load_yaml,
    project_version,
    without_worker_side,
)

SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
SERVICES = {"redis", "gateway", "worker-cpu", "worker-gpu", "prometheus", "grafana"}
WORKERS = ("worker-cpu", "worker-gpu")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return compose.load()


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text))


def registry_models(service: dict[str, Any]) -> dict[str, Any]:
    """Local models of the registry file the service's SLM_REGISTRY names, read on the host."""
    path = host_path(service, str(compose.effective_environment(service)["SLM_REGISTRY"]))
    assert path is not None, "SLM_REGISTRY is not inside a bind mount"
    models: dict[str, Any] = load_yaml(path)["models"]
    return {n: e for n, e in models.items() if e.get("backend", "local") == "local"}


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    for mount in compose.mounts(service):
        if mount.bind and (container_path == mount.target or container_path.startswith(mount.target + "/")):
            return Path(mount.source) / posixpath.relpath(container_path, mount.target)
    return None


def test_compose_file_is_valid_for_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose.load())]
    assert errors == []
    assert list(validator.iter_errors({"services": {"x": {"image": "i", "comand": ["serve"]}}}))


def test_services_and_profiles(spec: dict[str, Any]) -> None:
    services = spec["services"]
    assert set(services) == SERVICES
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    assert [n for n, s in services.items() if "profiles" in s] == ["worker-gpu"], "`up` starts the rest"


def test_gpu_worker_reserves_an_nvidia_gpu(spec: dict[str, Any]) -> None:
    (device,) = spec["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device.get("count") == "all" or int(device["count"]) >= 1
    assert compose.dockerfile_of(spec["services"]["worker-gpu"]) == (COMPOSE_DIR / "../docker/Dockerfile.gpu").resolve()
    assert "deploy" not in spec["services"]["worker-cpu"]


def test_commands_are_slm_server_subcommands(spec: dict[str, Any]) -> None:
    assert set(compose.slm_services(spec)) == {"gateway", "worker-cpu", "worker-gpu"}
    for name, service in compose.slm_services(spec).items():
        assert (
            compose.check_commands({"services": {name: service}}, known_subcommands(), registry_models(service)) == []
        )
    roles = {name: compose.command(s)[0] for name, s in compose.slm_services(spec).items()}
    assert roles == {"gateway": "gateway", "worker-cpu": "worker", "worker-gpu": "worker"}


def test_check_commands_catches_what_is_not_a_subcommand() -> None:
    service = {"build": {"context": "../..", "dockerfile": "deploy/docker/Dockerfile"}}
    bad = {
        "a": {**service, "command": ["serve-all"]},
        "b": {**service, "command": ["worker"]},
        "c": {**service, "command": ["worker", "--model", "nope"]},
    }
    problems = compose.check_commands({"services": bad}, SUBCOMMANDS, models={"smollm2"})
    assert [p.split(":")[0] for p in problems] == ["service a", "service b", "service c"]


def test_cpu_workers_scale_with_dash_dash_scale(spec: dict[str, Any]) -> None:
    for name in WORKERS:
        service = spec["services"][name]
        assert "container_name" not in service and "hostname" not in service, name
        assert "ports" not in service, f"{name}: a published port clashes at --scale 2"
        assert duration_s(service["stop_grace_period"]) > GENERATION_BUDGET_S


def test_ports_match_settings(spec: dict[str, Any]) -> None:
    gateway = spec["services"]["gateway"]
    port = int(str(compose.effective_environment(gateway)["SLM_PORT"]))
    (published,) = gateway["ports"]
    host_ip, host_port, container_port = published.split(":")
    assert int(container_port) == port
    assert host_ip == "127.0.0.1", "published on loopback unless SLM_BIND says otherwise"
    assert compose.load(env={"SLM_BIND": "0.0.0.0"})["services"]["gateway"]["ports"] == [f"0.0.0.0:{host_port}:{port}"]
    for name in WORKERS:
        env = compose.effective_environment(spec["services"][name])
        assert int(str(env["SLM_WORKER_PORT"])) > 0, "worker /ready, /metrics need a port"
    for name, service in compose.slm_services(spec).items():
        assert compose.effective_environment(service)["SLM_HOST"] == "0.0.0.0", name


def test_healthchecks_probe_ready_on_the_configured_port(spec: dict[str, Any]) -> None:
    for name, variable in (
        ("gateway", "SLM_PORT"),
        ("worker-cpu", "SLM_WORKER_PORT"),
        ("worker-gpu", "SLM_WORKER_PORT"),
    ):
        test = spec["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"]
        assert f"os.environ['{variable}']" in test[3] and "/ready" in test[3]
        assert duration_s(spec["services"][name]["healthcheck"]["start_period"]) >= 300, "model load time"
    assert spec["services"]["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_slm_services_wait_for_a_healthy_redis_they_can_reach(spec: dict[str, Any]) -> None:
    for name, service in compose.slm_services(spec).items():
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        url = compose.effective_environment(service)["SLM_REDIS_URL"]
        assert url == "redis://redis:6379/0", name


def test_redis_is_7_with_aof_and_noeviction(spec: dict[str, Any]) -> None:
    redis = spec["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    args = compose.command(redis)
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert "--maxmemory" in options
    assert [m.target for m in compose.mounts(redis) if not m.bind] == ["/data"]


def test_volumes_exist_and_are_declared(spec: dict[str, Any]) -> None:
    declared = set(spec["volumes"])
    used = set()
    for name, service in spec["services"].items():
        for mount in compose.mounts(service):
            if mount.bind:
                assert Path(mount.source).exists(), f"{name}: {mount.source} does not exist"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
                used.add(mount.source)
    assert used == declared


def test_registry_is_mounted_as_a_directory(spec: dict[str, Any]) -> None:
    for name, service in compose.slm_services(spec).items():
        registry = str(compose.effective_environment(service)["SLM_REGISTRY"])
        path = host_path(service, registry)
        assert path is not None and path.is_file(), f"{name}: {registry}"
        (mount,) = [m for m in compose.mounts(service) if m.bind and registry.startswith(m.target + "/")]
        assert Path(mount.source).is_dir() and mount.read_only, "a file mount misses editors' renames"
        assert registry_models(service), f"{name}: no local model"


def test_gpu_registry_agrees_with_the_gateways(spec: dict[str, Any]) -> None:
    gateway = registry_models(spec["services"]["gateway"])
    gpu = registry_models(spec["services"]["worker-gpu"])
    assert without_worker_side(gpu) == without_worker_side(gateway)
    assert all(entry["n_gpu_layers"] == -1 for entry in gpu.values())
    assert all(entry.get("n_gpu_layers", 0) == 0 for entry in registry_models(spec["services"]["worker-cpu"]).values())


def test_every_local_model_has_a_default_worker(spec: dict[str, Any]) -> None:
    # gateway /ready (and `up --wait`) waits for a ready worker of every local model
    served = {
        compose.command(s)[2] for n, s in spec["services"].items() if n.startswith("worker") and "profiles" not in s
    }
    assert served == set(registry_models(spec["services"]["gateway"]))


def test_models_directory_is_mounted_where_slm_model_dirs_points(spec: dict[str, Any]) -> None:
    for name in WORKERS:
        service = spec["services"][name]
        for directory in str(compose.effective_environment(service)["SLM_MODEL_DIRS"]).split(":"):
            path = host_path(service, directory)
            assert path is not None and path.is_dir(), f"{name}: {directory}"


def test_grafana_is_provisioned_from_grafana_dir(spec: dict[str, Any]) -> None:
    mounts = {m.target: Path(m.source) for m in compose.mounts(spec["services"]["grafana"]) if m.bind}
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    provider_path = load_yaml(DASHBOARD_PROVISIONING)["providers"][0]["options"]["path"]
    assert mounts[provider_path] == (GRAFANA / "dashboards").resolve()
    assert list(mounts[provider_path].glob("*.json"))


def test_images_carry_the_project_version(spec: dict[str, Any]) -> None:
    images = {name: s["image"] for name, s in compose.slm_services(spec).items()}
    assert images == {
        "gateway": f"slm-server:{project_version()}",
        "worker-cpu": f"slm-server:{project_version()}",
        "worker-gpu": f"slm-server-gpu:{project_version()}",
    }
    for name, service in spec["services"].items():
        assert not service["image"].endswith(":latest") and ":" in service["image"], name


def test_every_variable_has_a_default() -> None:
    # `docker compose up` works with nothing exported
    text = COMPOSE_FILE.read_text(encoding="utf-8").replace("$$", "")
    without_default = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", text)
    assert without_default == []
    assert compose.load(env={}) == compose.load()
