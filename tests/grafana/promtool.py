"""Run promtool (Debian package `prometheus`), Prometheus' own PromQL parser and rule checker."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

INSTALL_HINT = "install Debian's `prometheus` package (apt-get install -y prometheus)"


def binary(name: str) -> str:
    """Path of `promtool` or `prometheus`; fails the test (not skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: {INSTALL_HINT}", pytrace=False)
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return run("check", "rules", path)


def check_expressions(exprs: Sequence[str]) -> list[str]:
    """Parse each expression with promtool; returns the errors (empty when all parse).

    The expressions become recording rules `check:expr_<i>` in one temporary rules file, one
    promtool run for all; a failing file is re-checked one expression at a time to say which.
    """

    def check(batch: Sequence[str]) -> subprocess.CompletedProcess[str]:
        rules = [{"record": f"check:expr_{i}", "expr": expr} for i, expr in enumerate(batch)]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "rules.yaml"
            # JSON is YAML: promtool reads it as a rules file.
            path.write_text(json.dumps({"groups": [{"name": "check", "rules": rules}]}), encoding="utf-8")
            return check_rules(path)

    if check(exprs).returncode == 0:
        return []
    errors: list[str] = []
    for expr in exprs:
        result = check([expr])
        if result.returncode != 0:
            errors.append(f"{expr}\n  {(result.stdout + result.stderr).strip()}")
    if not errors:  # the batch failed for a reason no single expression has
        errors.append(check(exprs).stderr)
    return errors
