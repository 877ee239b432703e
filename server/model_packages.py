"""GGUF files inside installed Python packages (`gguf: package/file.gguf`), found without running code.

A registry line must not be a way to execute a module: `this/zen.gguf` used to import `this`, and
any package's `__init__` ran during `registry check`. Packages are therefore located with
`importlib.machinery.PathFinder.find_spec`, which searches `sys.path` for the name and executes
nothing; only a regular package (a directory) can hold a model, never a plain module.

Some wheels ship a model in parts across several packages (Gemma 3 270M: four `..._partN`
packages) with an `assemble()` that joins them. Instead of calling that code, the package's
`__init__.py` is read as a syntax tree for its literal constants (`MODEL_NAME`, `_CHUNK_MODULES`,
`_CHUNK_FILES`, `EXPECTED_SHA256`), the parts are located the same way, and joined here into the
cache path those wheels use (`~/.cache/<package>/<file>`), checked against the digest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import os
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_INIT_BYTES = 1_000_000  # a package __init__ larger than this is not read for model constants


def package_dir(name: str) -> Path | None:
    """The directory of the installed regular package `name`, or None; imports nothing."""
    if not PACKAGE_NAME.fullmatch(name):
        return None
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return None  # absent, a plain module (`this`), or a namespace package
    init = Path(spec.origin)
    if init.name != "__init__.py":
        return None  # an extension module or anything else that is not a package directory
    return init.parent.resolve()


@dataclass(frozen=True)
class PartedModel:
    """A model a package declares as the concatenation of `data/<file>` of other packages."""

    package: str
    model_name: str
    parts: tuple[tuple[str, str], ...]  # (package, file name) in order
    sha256: str | None


def _literal_constants(init: Path) -> dict[str, object]:
    try:
        if init.stat().st_size > MAX_INIT_BYTES:
            return {}
        tree = ast.parse(init.read_text(encoding="utf-8"), filename=str(init))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    found: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                continue
    return found


def parted_model(package: str, filename: str) -> PartedModel | None:
    """What `package` declares about a model shipped in parts, when it declares `filename`."""
    pkg = package_dir(package)
    if pkg is None:
        return None
    consts = _literal_constants(pkg / "__init__.py")
    modules, files, digest = consts.get("_CHUNK_MODULES"), consts.get("_CHUNK_FILES"), consts.get("EXPECTED_SHA256")
    if consts.get("MODEL_NAME") != filename or not isinstance(modules, list | tuple) or \
            not isinstance(files, list | tuple) or not modules or len(modules) != len(files):
        return None
    if not all(isinstance(m, str) and PACKAGE_NAME.fullmatch(m) for m in modules):
        return None
    if not all(isinstance(f, str) and f and Path(f).name == f and f not in (".", "..") for f in files):
        return None
    sha = digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest) else None
    return PartedModel(package, filename, tuple(zip(modules, files, strict=True)), sha)


def cache_path(model: PartedModel) -> Path:
    """Where the joined file lives: the path the parted wheels' own `default_output_path()` uses."""
    return Path.home() / ".cache" / model.package / model.model_name


def _part_files(model: PartedModel) -> list[Path] | None:
    paths = []
    for package, filename in model.parts:
        pkg = package_dir(package)
        if pkg is None:
            return None
        path = (pkg / "data" / filename).resolve()
        if not path.is_relative_to(pkg) or not path.is_file():
            return None
        paths.append(path)
    return paths


def assemble(model: PartedModel) -> Path | None:
    """The joined model file (joined now unless a complete copy is cached); None when a part is missing.

    Raises ValueError when the joined bytes do not match the declared digest (nothing is kept)."""
    parts = _part_files(model)
    if parts is None:
        return None
    target = cache_path(model)
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if model.sha256 is not None and digest.hexdigest() != model.sha256.lower():
            raise ValueError(f"the joined parts of {model.model_name} do not match their sha256")
        os.replace(partial, target)  # atomic: concurrent workers never see a half-written file
    finally:
        partial.unlink(missing_ok=True)
    return target
