"""A copy of the repository alone, with nothing beside it, collects every test and finds its data.

The copy holds what a clone of this working tree would (git's tracked files plus the untracked ones
it does not ignore), inside an otherwise empty directory, so a test that reads anything outside the
repository (a `../shared/...` path, a developer's file) fails here rather than on a newcomer's machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .project import ROOT


def _copy_like_a_clone(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree, not committed yet
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def _env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLM_", "PYTEST"))}
    env["PYTHONPATH"] = str(clone)  # the copy's `server` and `tests`, not this checkout's
    return env


def _run(clone: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=clone, env=_env(clone), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    alone = tmp_path_factory.mktemp("nothing-beside-it")
    repo = alone / "slm-server"
    _copy_like_a_clone(repo)
    assert sorted(p.name for p in alone.iterdir()) == ["slm-server"]
    return repo


def test_every_test_file_imports_in_a_copy_with_nothing_beside_it(clone: Path) -> None:
    result = _run(clone, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert " error" not in result.stdout.splitlines()[-1], result.stdout[-4000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert len(collected) > 500, result.stdout[-2000:]
    assert all(line.startswith("tests/") for line in collected)


def test_the_openai_spec_is_read_from_inside_the_copy(clone: Path) -> None:
    probe = ("from tests import openapi; openapi.validator('CreateChatCompletionResponse'); "
             "print(openapi.SPEC.resolve())")
    result = _run(clone, "-c", probe)
    assert result.returncode == 0, result.stderr[-4000:]
    assert Path(result.stdout.strip()).is_relative_to(clone.resolve())
