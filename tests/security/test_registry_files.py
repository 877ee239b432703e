"""Hostile registry files, checked the way `serve`, `registry check` and hot reload check them:
`load_registry` (YAML, `safe_load` only) then `check_files` (GGUF paths confined)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from server.errors import RegistryError
from server.registry import check_files, load_registry


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """conf/ holds the registry, models/ is the one model directory, outside/ is anywhere else."""
    out = {name: tmp_path / name for name in ("conf", "models", "outside")}
    for folder in out.values():
        folder.mkdir()
    (out["models"] / "ok.gguf").write_bytes(b"GGUF")
    (out["outside"] / "secret.gguf").write_bytes(b"GGUF")
    os.symlink(out["outside"] / "secret.gguf", out["models"] / "escape.gguf")
    os.symlink(out["outside"], out["models"] / "linked-dir")
    return out


def problems_of(places: dict[str, Path], entries: dict[str, str]) -> list[str]:
    lines = ["models:"] + [f"  {name}:\n    gguf: {json.dumps(gguf)}" for name, gguf in entries.items()]
    path = places["conf"] / "model_registry.yaml"
    path.write_text("\n".join(lines) + "\n")
    return check_files(load_registry(path), registry_dir=path.parent, model_dirs=[places["models"]])


def test_model_paths_that_leave_the_model_directories_are_refused(places: dict[str, Path]) -> None:
    hostile = {
        "dotdot": "../../etc/passwd",
        "dotdot-deep": "../../../../../../../../etc/passwd",
        "dotdot-inside": "ok/../../outside/secret.gguf",
        "absolute-system": "/etc/passwd",
        "absolute-outside": str(places["outside"] / "secret.gguf"),
        "symlink-file": "escape.gguf",
        "symlink-dir": "linked-dir/secret.gguf",
        "nul-byte": "ok.gguf\x00.txt",
    }
    problems = problems_of(places, {**hostile, "fine": "ok.gguf"})
    assert len(problems) == len(hostile), problems
    for name in hostile:
        assert any(p.startswith(f"models.{name}.gguf ") for p in problems), (name, problems)
    assert not any("models.fine." in p for p in problems)
    assert not any("root:" in p for p in problems)  # nothing of /etc/passwd was read into a message


@pytest.mark.parametrize("tag", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/object:builtins.object {{}}",
])
def test_python_tags_in_the_registry_are_refused_and_run_nothing(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model_registry.yaml"
    path.write_text("models:\n  tiny:\n    gguf: " + tag.format(marker=marker) + "\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry(path)
    assert not marker.exists()
