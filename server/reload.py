"""Hot reload of the registry: watch the file (and SIGHUP), validate fully, then hand over.

The file is polled by content digest rather than watched with inotify on its path: a Kubernetes
ConfigMap mounted as a directory changes by swapping a `..data` symlink, which path watches miss.
An invalid edit changes nothing: it is logged (entry and field) and counted as a failed reload.
Where a hosted model sends its requests (and its key) is logged at WARNING when an edit changes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from server.errors import RegistryError
from server.metrics import Metrics
from server.registry import DEFAULT_KEY_ENV_PATTERN, HostedModel, Registry, check_files, check_key_envs, load_registry

log = logging.getLogger("slm.reload")

OnReload = Callable[[Registry, Registry], None]


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_checked(path: Path, model_dirs: list[Path], key_env_pattern: str = DEFAULT_KEY_ENV_PATTERN) -> Registry:
    """Load and check a registry completely (schema, names, key variables, model files); raise RegistryError."""
    registry = load_registry(path)
    problems = check_key_envs(registry, key_env_pattern)
    problems += check_files(registry, registry_dir=path.resolve().parent, model_dirs=model_dirs)
    if problems:
        raise RegistryError("\n".join(f"{path}: {p}" for p in problems))
    return registry


class RegistryWatcher:
    def __init__(self, path: Path, current: Registry, *, model_dirs: list[Path], metrics: Metrics,
                 interval_s: float = 1.0, key_env_pattern: str = DEFAULT_KEY_ENV_PATTERN,
                 checks: Sequence[Callable[[Registry], list[str]]] = ()) -> None:
        self.path = path
        self.checks = list(checks)  # more that a new registry must pass (serve: the memory budget)
        self.current = current
        self.model_dirs = model_dirs
        self.key_env_pattern = key_env_pattern
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
            new = load_checked(self.path, self.model_dirs, self.key_env_pattern)
            problems = [problem for check in self.checks for problem in check(new)]
            if problems:
                raise RegistryError("\n".join(f"{self.path}: {p}" for p in problems))
        except RegistryError as exc:
            self.metrics.registry_reloads.labels("failure").inc()
            log.error("registry reload refused; the running configuration stays:\n%s", exc)
            return False
        old, self.current = self.current, new
        self.metrics.registry_reloads.labels("success").inc()
        log.info("registry reloaded: %s", describe_diff(old, new) or "no model changed")
        for line in upstream_changes(old, new):
            log.warning("registry reload: %s", line)
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


def safe_url(url: str | None) -> str:
    """A URL fit for the log: no user or password, no query or fragment (they may carry tokens)."""
    if url is None:
        return "(the provider's default)"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(not a valid URL)"
    user = "***@" if parts.username or parts.password else ""
    query = "?***" if parts.query or parts.fragment else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}{query}"


def upstream_changes(old: Registry, new: Registry) -> list[str]:
    """Hosted models of both registries whose `api_base` or `api_key_env` changed, as log lines."""
    lines = []
    for name in sorted(set(old.models) & set(new.models)):
        before, after = old.models[name], new.models[name]
        if not isinstance(after, HostedModel):
            continue
        was = before if isinstance(before, HostedModel) else None
        if was is None or was.api_base != after.api_base:
            lines.append(f"models.{name}.api_base changed: "
                         f"{safe_url(was.api_base) if was else '(not hosted)'} -> {safe_url(after.api_base)}")
        if was is not None and was.api_key_env != after.api_key_env:
            lines.append(f"models.{name}.api_key_env changed: {was.api_key_env} -> {after.api_key_env}")
    return lines
