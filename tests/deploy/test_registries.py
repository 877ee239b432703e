"""Every model registry deploy/ ships is one the server accepts, naming the default models the
way the project's own registry does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.registry import load_registry

from .project import COMPOSE_DIR, DEFAULT_REGISTRY, K8S, ROOT, load_yaml

REGISTRIES = sorted([*COMPOSE_DIR.glob("registry/*.yaml"), *K8S.rglob("model_registry.yaml")])


def ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_are_registries_for_compose_and_each_kubernetes_target() -> None:
    assert len(REGISTRIES) == 4, [ids(p) for p in REGISTRIES]


@pytest.mark.parametrize("path", REGISTRIES, ids=ids)
def test_registry_loads(path: Path) -> None:
    registry = load_registry(path)
    assert registry.local_models()


@pytest.mark.parametrize("path", REGISTRIES, ids=ids)
def test_registry_check_command_accepts_it(path: Path) -> None:
    script = Path(sys.executable).with_name("slm-server")
    executable = str(script) if script.exists() else shutil.which("slm-server")
    if executable is None:
        pytest.fail("the `slm-server` console script is not installed (pip install -e .)", pytrace=False)
    result = subprocess.run(
        [executable, "registry", "check", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", REGISTRIES, ids=ids)
def test_default_models_are_named_as_in_the_project_registry(path: Path) -> None:
    if not DEFAULT_REGISTRY.exists():
        pytest.fail(f"{DEFAULT_REGISTRY.relative_to(ROOT)} (the project's default registry) is missing", pytrace=False)
    defaults = load_yaml(DEFAULT_REGISTRY)["models"]
    for name, entry in load_yaml(path)["models"].items():
        if name in defaults:
            assert entry["gguf"] == defaults[name]["gguf"], f"{name}: {entry['gguf']} vs {defaults[name]['gguf']}"
            # a client's model name works the same on a laptop and in a deployment
            assert entry.get("aliases", []) == defaults[name].get("aliases", []), name
