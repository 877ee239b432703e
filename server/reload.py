"""Hot reload of the registry: watch the file (and SIGHUP), validate fully, then hand over.

The file is polled by content digest rather than watched with inotify on its path: a Kubernetes
ConfigMap mounted as a directory changes by swapping a `..data` symlink, which path watches miss.
An invalid edit changes nothing: it is logged (entry and field) and counted as a failed reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from server.errors import RegistryError
from server.metrics import Metrics
from server.registry import Registry, check_files, load_registry

log = logging.getLogger("slm.reload")

OnReload = Callable[[Registry, Registry], None]


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_checked(path: Path, model_dirs: list[Path]) -> Registry:
    """Load and check a registry completely (schema, names, model files); raise RegistryError."""
    registry = load_registry(path)
    problems = check_files(registry, registry_dir=path.resolve().parent, model_dirs=model_dirs)
    if problems:
        raise RegistryError("\n".join(f"{path}: {p}" for p in problems))
    return registry


class RegistryWatcher:
    def __init__(self, path: Path, current: Registry, *, model_dirs: list[Path], metrics: Metrics,
                 interval_s: float = 1.0) -> None:
        self.path = path
        self.current = current
        self.model_dirs = model_dirs
        self.metrics = metrics
        self.interval_s = interval_s
        self.listeners: list[OnReload] = []
        self._digest = file_digest(path)
        self._wake = asyncio.Event()

    def request_reload(self) -> None:
        self._wake.set()

    def install_sighup(self) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_reload)
        except (NotImplementedError, RuntimeError, ValueError):
            log.info("SIGHUP reload is not available in this process")

    def reload(self, *, force: bool = False) -> bool:
        """Apply the file if it changed (or if forced); True when a new registry was applied."""
        digest = file_digest(self.path)
        if digest is None or (digest == self._digest and not force):
            return False
        self._digest = digest
        try:
            new = load_checked(self.path, self.model_dirs)
        except RegistryError as exc:
            self.metrics.registry_reloads.labels("failure").inc()
            log.error("registry reload refused; the running configuration stays:\n%s", exc)
            return False
        old, self.current = self.current, new
        self.metrics.registry_reloads.labels("success").inc()
        log.info("registry reloaded: %s", describe_diff(old, new) or "no model changed")
        for listener in self.listeners:
            listener(old, new)
        return True

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
                forced = True
            except TimeoutError:
                forced = False
            self._wake.clear()
            self.reload(force=forced)


def diff(old: Registry, new: Registry) -> tuple[set[str], set[str], set[str]]:
    """(added, removed, changed) model names."""
    added = set(new.models) - set(old.models)
    removed = set(old.models) - set(new.models)
    changed = {n for n in set(old.models) & set(new.models) if old.models[n] != new.models[n]}
    return added, removed, changed


def describe_diff(old: Registry, new: Registry) -> str:
    added, removed, changed = diff(old, new)
    parts = [f"{label} {', '.join(sorted(names))}" for label, names in
             (("added", added), ("removed", removed), ("changed", changed)) if names]
    return "; ".join(parts)
