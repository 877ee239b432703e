"""Every module of `server/` imports with the runtime dependencies alone.

`make serve` installs the lock without the `test` extra (and `uv sync` removes it from a venv that had
it), so a module that needs a package only the tests install breaks the README's first command, however
green the tests are (the residency's GGUF header reader once needed `gguf` from the test extra). Here
each module is imported in a child interpreter that refuses every top-level module whose distribution
is outside the runtime dependencies' closure.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import pkgutil
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import server

PROJECT = "slm-server"

_CHILD = """
import importlib, importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not a runtime dependency)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
failed = {}
for module in json.loads(sys.argv[2]):
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = str(exc)
print(json.dumps(failed))
"""


def runtime_closure() -> set[str]:
    """The project's own distribution and every one its dependencies need, without its extras."""
    names = {canonicalize_name(PROJECT)}
    done: set[tuple[str, str]] = set()
    todo = [(Requirement(text), "") for text in metadata.requires(PROJECT) or []]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        names.add(name)
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in done:
                continue
            done.add((name, wanted))
            try:
                needs = metadata.requires(req.name) or []
            except metadata.PackageNotFoundError:
                break  # not installed: not for this platform
            todo += [(Requirement(text), wanted) for text in needs]
    return names


def test_every_server_module_imports_without_the_test_extra() -> None:
    runtime = runtime_closure()
    assert "gguf" in runtime and "pytest" not in runtime  # the closure is the runtime's, not the venv's
    blocked = sorted(module for module, dists in metadata.packages_distributions().items()
                     if not any(canonicalize_name(d) in runtime for d in dists))
    assert "pytest" in blocked and "anthropic" in blocked
    modules = [info.name for info in pkgutil.walk_packages(server.__path__, "server.")
               if info.name != "server.__main__"]  # runs the command line: its imports are `server.cli`'s
    assert len(modules) > 100
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(blocked), json.dumps(modules)],
                           capture_output=True, text=True, timeout=300, check=True)
    failed = json.loads(child.stdout.strip().splitlines()[-1])
    assert failed == {}, failed
