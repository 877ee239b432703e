"""Hostile registry files, checked the way `serve`, `registry check` and hot reload check them:
`load_registry` (YAML, `safe_load` only) then `check_files` (GGUF paths confined)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.errors import RegistryError
from server.registry import check_files, load_registry, resolve_gguf


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


ZEN = "Beautiful is better than ugly"


def write_package(site: Path, name: str, init: str, files: dict[str, bytes] | None = None) -> Path:
    folder = site / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(init)
    for rel, data in (files or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_registry_check_finds_package_models_without_running_package_code(tmp_path: Path) -> None:
    site, marker = tmp_path / "site", tmp_path / "executed"
    side_effect = f"import pathlib\npathlib.Path({str(marker)!r}).write_text(__name__)\nprint('I RAN')\n"
    write_package(site, "markerpkg", side_effect, {"present.gguf": b"GGUF"})
    (site / "markermod.py").write_text(side_effect)
    registry = tmp_path / "model_registry.yaml"
    entries = {"zen": "this/zen.gguf", "absent": "markerpkg/absent.gguf", "module": "markermod/x.gguf",
               "antigravity": "antigravity/x.gguf", "present": "markerpkg/present.gguf"}
    registry.write_text("models:\n" + "".join(f"  {n}:\n    gguf: {g}\n" for n, g in entries.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env["BROWSER"] = "false"  # should `antigravity` ever run, it must not open anything
    result = subprocess.run([sys.executable, "-m", "server", "registry", "check", str(registry)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert result.returncode == 1
    for name in ("zen", "absent", "module", "antigravity"):
        assert f"models.{name}.gguf '{entries[name]}'" in result.stderr, (name, result.stderr)
    assert "models.present." not in result.stderr
    assert ZEN not in result.stdout + result.stderr and "I RAN" not in result.stdout + result.stderr
    assert not marker.exists()


def test_a_model_shipped_in_parts_is_joined_without_importing_its_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, marker, home = tmp_path / "site", tmp_path / "executed", tmp_path / "home"
    parts = [b"GGUF" + b"a" * 1000, b"b" * 777]
    constants = (f"MODEL_NAME = 'm.gguf'\n_CHUNK_MODULES = ['partedpkg_part1', 'partedpkg_part2']\n"
                 f"_CHUNK_FILES = ['m.gguf.part00', 'm.gguf.part01']\n"
                 f"EXPECTED_SHA256 = {hashlib.sha256(b''.join(parts)).hexdigest()!r}\n")
    side_effect = f"import pathlib\npathlib.Path({str(marker)!r}).write_text(__name__)\n"
    write_package(site, "partedpkg", side_effect + constants)
    write_package(site, "partedpkg_part1", side_effect, {"data/m.gguf.part00": parts[0]})
    write_package(site, "partedpkg_part2", side_effect, {"data/m.gguf.part01": parts[1]})
    write_package(site, "badsum", constants.replace(hashlib.sha256(b"".join(parts)).hexdigest(), "0" * 64))
    write_package(site, "escaping", constants.replace("'m.gguf.part01'", "'../../escaping/secret'"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("HOME", str(home))

    joined = resolve_gguf("partedpkg/m.gguf", registry_dir=tmp_path, model_dirs=[])
    assert joined == (home / ".cache" / "partedpkg" / "m.gguf").resolve()
    assert joined.read_bytes() == b"".join(parts)
    assert resolve_gguf("partedpkg/m.gguf", registry_dir=tmp_path, model_dirs=[]) == joined  # cached
    with pytest.raises(RegistryError, match="sha256"):
        resolve_gguf("badsum/m.gguf", registry_dir=tmp_path, model_dirs=[])
    assert list((home / ".cache").glob("badsum/*")) == []  # neither the file nor a partial copy is left
    with pytest.raises(RegistryError, match="no such file"):
        resolve_gguf("escaping/m.gguf", registry_dir=tmp_path, model_dirs=[])
    assert not marker.exists()
    assert not {"partedpkg", "partedpkg_part1", "partedpkg_part2", "badsum", "escaping"} & set(sys.modules)
