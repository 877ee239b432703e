"""SLM_MEMORY_BUDGET and the registry's residency fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.errors import RegistryError
from server.registry import LocalModel, parse_registry
from server.residency.budget import DEFAULT_SHARE, budget_bytes, machine_memory, parse_size
from server.residency.manager import check_budget
from server.settings import Settings

from .random_gguf import Dims, write_random_gguf


@pytest.mark.parametrize(("text", "expected"), [
    ("8GiB", 8 * 1024**3), ("512MiB", 512 * 1024**2), ("1.5GB", 1_500_000_000), ("1000000", 1_000_000),
    (" 64 kib ", 64 * 1024),
])
def test_sizes_as_people_write_them(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["eight gigs", "8XB", "-1GiB", "0", "GiB"])
def test_a_bad_size_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match=r"size|unit"):
        parse_size(text)
    with pytest.raises(ValidationError, match="memory_budget"):
        Settings(memory_budget=text)


def test_the_default_budget_is_a_share_of_the_machine(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683664 kB\nMemFree:        22777372 kB\n")
    assert machine_memory(meminfo) == 24683664 * 1024
    assert budget_bytes("") == int(machine_memory() * DEFAULT_SHARE)
    assert Settings(memory_budget="2GiB").memory_budget_bytes() == 2 * 1024**3


def test_residency_defaults_keep_todays_behaviour() -> None:
    entry = parse_registry({"models": {"m": {"gguf": "m.gguf"}}}).models["m"]
    assert isinstance(entry, LocalModel)
    assert (entry.load, entry.idle_unload_s, entry.pinned, entry.on_demand) == ("boot", None, False, False)


def test_residency_fields_are_validated_naming_the_model() -> None:
    with pytest.raises(RegistryError, match=r"models\.m\.load"):
        parse_registry({"models": {"m": {"gguf": "m.gguf", "load": "lazy"}}})
    with pytest.raises(RegistryError, match=r"models\.m\.idle_unload_s"):
        parse_registry({"models": {"m": {"gguf": "m.gguf", "idle_unload_s": 0}}})
    with pytest.raises(RegistryError, match=r"models\.m: .*pinned model is never unloaded"):
        parse_registry({"models": {"m": {"gguf": "m.gguf", "pinned": True, "idle_unload_s": 30}}})


def test_a_model_that_cannot_fit_alone_is_a_registry_error_with_the_numbers(tmp_path: Path) -> None:
    write_random_gguf(tmp_path / "m.gguf", Dims())
    registry = parse_registry({"models": {"small": {"gguf": "m.gguf", "n_ctx": 256, "parallel": 1},
                                          "wide": {"gguf": "m.gguf", "n_ctx": 8192, "parallel": 8}}})
    costs = check_budget(registry, 10**12, registry_dir=tmp_path, model_dirs=[])
    assert costs["wide"] > costs["small"]
    budget = (costs["small"] + costs["wide"]) // 2
    with pytest.raises(RegistryError) as refused:
        check_budget(registry, budget, registry_dir=tmp_path, model_dirs=[])
    message = str(refused.value)
    assert "models.wide:" in message and "models.small" not in message
    assert f"({costs['wide']} bytes" in message and f"({budget} bytes, SLM_MEMORY_BUDGET)" in message


def test_serve_refuses_to_start_a_registry_with_a_model_too_big_for_the_budget(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    write_random_gguf(tmp_path / "m.gguf", Dims())
    (tmp_path / "model_registry.yaml").write_text("models:\n  huge:\n    gguf: m.gguf\n    n_ctx: 4096\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env.update({"SLM_REGISTRY": str(tmp_path / "model_registry.yaml"), "SLM_MEMORY_BUDGET": "64MiB",
                "SLM_PORT": "0"})
    done = subprocess.run([sys.executable, "-m", "server", "serve"], env=env, cwd=tmp_path, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "models.huge: needs an estimated" in err and "(67108864 bytes, SLM_MEMORY_BUDGET)" in err


def test_a_reload_with_a_model_too_big_for_the_budget_is_refused(tmp_path: Path) -> None:
    from server.metrics import Metrics
    from server.reload import RegistryWatcher, load_checked
    from server.residency.manager import budget_problems

    write_random_gguf(tmp_path / "m.gguf", Dims())
    path = tmp_path / "model_registry.yaml"
    path.write_text("models:\n  m:\n    gguf: m.gguf\n    n_ctx: 256\n    parallel: 1\n")
    current = load_checked(path, [])
    small = check_budget(current, 10**12, registry_dir=tmp_path, model_dirs=[])["m"]
    budget = small + 1024 * 1024
    watcher = RegistryWatcher(path, current, model_dirs=[], metrics=Metrics(),
                              checks=[lambda new: budget_problems(new, budget, tmp_path, [])])
    path.write_text("models:\n  m:\n    gguf: m.gguf\n    n_ctx: 8192\n    parallel: 8\n")
    assert watcher.reload() is False
    assert watcher.current is current  # the running configuration stays
    path.write_text("models:\n  m:\n    gguf: m.gguf\n    n_ctx: 256\n    parallel: 1\n    pinned: true\n")
    assert watcher.reload() is True and watcher.current.local_models()["m"].pinned
