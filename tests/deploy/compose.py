"""Read deploy/compose/compose.yaml the way Compose does: YAML (anchors, merge keys), then
`${VAR}` interpolation; and give each service its effective command, environment and mounts."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import dockerfile
from .project import COMPOSE_DIR, COMPOSE_FILE, command_problems

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)

# Image ENV that describes the image itself rather than the process (not carried to a local run).
IMAGE_ONLY_ENV = frozenset({"PATH", "VIRTUAL_ENV", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"})


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR:+alt}`, `$$`."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        unset_or_empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(current)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return "" if current is None else current

    return _INTERPOLATION.sub(replace, value)


def load_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def load(path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file with variables interpolated from `env` (default: none set)."""
    data: dict[str, Any] = interpolate(load_raw(path), env or {})
    return data


@dataclass(frozen=True)
class Mount:
    source: str  # host path (absolute) or volume name
    target: str
    read_only: bool
    bind: bool


def mounts(service: Mapping[str, Any], base: Path = COMPOSE_DIR) -> list[Mount]:
    found = []
    for item in service.get("volumes", []):
        if isinstance(item, dict):
            source, target = item.get("source", ""), item["target"]
            read_only, bind = bool(item.get("read_only")), item.get("type") == "bind"
        else:
            parts = item.split(":")
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            bind = source.startswith((".", "/", "~"))
        if bind:
            source = str((base / source).resolve())
        found.append(Mount(source, target, read_only, bind))
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """The service's `environment` as a mapping; None = passed through from the shell."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs: dict[str, str | None] = {}
        for item in raw:
            key, sep, value = item.partition("=")
            pairs[key] = value if sep else None
        return pairs
    return {key: None if value is None else str(value) for key, value in raw.items()}


def dockerfile_of(service: Mapping[str, Any], base: Path = COMPOSE_DIR) -> Path | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (base / build / "Dockerfile").resolve()
    return (base / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve()


def image_env(service: Mapping[str, Any]) -> dict[str, str]:
    """ENV of the final stage of the service's Dockerfile (empty for a pulled image)."""
    path = dockerfile_of(service)
    return {} if path is None else dockerfile.parse(path).final.env()


def effective_environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """What the process sees: the image's ENV, then the service's `environment` over it."""
    env: dict[str, str | None] = {k: v for k, v in image_env(service).items() if k not in IMAGE_ONLY_ENV}
    env.update(environment(service))
    return env


def command(service: Mapping[str, Any]) -> list[str]:
    value = service.get("command")
    if value is None:
        return []
    if isinstance(value, str):
        raise ValueError(f"command {value!r} is a string: write it as a list (no shell)")
    return [str(item) for item in value]


def slm_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the slm-server image (built from deploy/docker/)."""
    return {name: svc for name, svc in compose["services"].items() if dockerfile_of(svc) is not None}


def check_commands(
    compose: Mapping[str, Any], subcommands: Collection[str], models: Collection[str] | None = None
) -> list[str]:
    """Every slm-server service's command must be a real subcommand (see project.command_problems)."""
    problems = []
    for name, service in slm_services(compose).items():
        problems += [f"service {name}: {p}" for p in command_problems(command(service), subcommands, models)]
    return problems
