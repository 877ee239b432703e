"""The model registry: `model_registry.yaml`, validated into typed entries.

Every entry is discriminated by `backend` (`local` GGUF served by workers, `hosted` through
litellm, `router` choosing one of its targets per request). Unknown keys are refused; a bad file
raises `RegistryError` naming the file, the entry and the field. Secrets are never in the file: a
hosted entry names the env var that holds its key.

References between entries are checked at load: `fallbacks`, `targets` and `escalate[].to` name
other local or hosted models (never a router), and fallbacks, which chain (a fallback's own
fallbacks are tried after it), form no cycle.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.errors import RegistryError
from server.model_packages import assemble, package_dir, parted_model

# What `api_key_env` may name (SLM_PROVIDER_KEY_ENV_PATTERN): variables that look like provider keys,
# so that a registry edit cannot send any other variable of the server's environment upstream.
DEFAULT_KEY_ENV_PATTERN = r"^[A-Z][A-Z0-9_]*_(API_KEY|KEY|TOKEN)$"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


def _valid_names(value: list[str]) -> list[str]:
    for name in value:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"'{name}' is not a valid model name")
    return value


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    aliases: list[str] = Field(default_factory=list, description="Other names clients may use.")
    description: str = ""
    fallbacks: list[str] = Field(
        default_factory=list, description="Registry models to try, in order, when this one cannot serve."
    )

    @field_validator("aliases", "fallbacks")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return _valid_names(value)


class LocalModel(_Entry):
    """A GGUF file served by worker processes through llama-cpp-python."""

    backend: Literal["local"] = "local"
    gguf: str = Field(description="A path, or `package/file.gguf` inside an installed Python package.")
    n_ctx: int = Field(default=2048, ge=64, le=1_048_576, description="Context length of one sequence.")
    n_threads: int | None = Field(default=None, ge=1, le=512, description="CPU threads; default all cores.")
    n_batch: int = Field(default=512, ge=8, le=65536, description="Prompt tokens evaluated per step.")
    prefill_chunk: int = Field(
        default=512, ge=16, le=65536,
        description="Prompt tokens evaluated per step while other sequences generate (smaller: their "
                    "tokens and new short prompts wait less, a long prompt takes a little longer).")
    n_gpu_layers: int = Field(default=0, ge=-1, description="Layers offloaded to the GPU; -1 = all.")
    persistent_threads: bool = Field(
        default=True, description="Decode on a threadpool kept for the worker's life, as llama-server does "
                                  "(false: ggml makes one for every step).")
    poll: int = Field(
        default=50, ge=0, le=100,
        description="How hard the persistent threadpool's idle threads poll for the next step, 0-100 (llama.cpp's "
                    "`--poll`; no effect in an OpenMP build of llama.cpp, whose threads wait as OpenMP's do).")
    parallel: int = Field(default=4, ge=1, le=256, description="Sequences one worker decodes together.")
    replicas: int = Field(default=1, ge=0, le=64, description="Worker processes `serve` starts.")
    max_queue: int = Field(default=64, ge=1, description="Requests queued or running before 429.")
    embeddings: bool = Field(default=False, description="Serve /v1/embeddings with this model.")
    load: Literal["boot", "on_demand"] = Field(
        default="boot", description="`boot`: workers start with `serve` and stay (as far as the memory budget "
        "allows: pinned models first, then registry order; the rest load on their first request); `on_demand`: "
        "started when a request for the model is queued (requests wait for it, bounded by the queue timeout).")
    idle_unload_s: float | None = Field(
        default=None, gt=0, description="Seconds without a request after which `serve` stops the model's workers "
        "(null: never). An unloaded model loads again on its next request.")
    pinned: bool = Field(default=False, description="Never stopped to make room under the memory budget "
                         "(nor for being idle); the pinned models together must fit the budget.")

    @model_validator(mode="after")
    def _residency(self) -> LocalModel:
        if self.pinned and self.idle_unload_s is not None:
            raise ValueError("a pinned model is never unloaded: drop `idle_unload_s` or `pinned`")
        return self

    @property
    def on_demand(self) -> bool:
        """Whether requests wait for this model's workers to start (`load: on_demand`) rather than
        answering `no_worker` when none is live."""
        return self.load == "on_demand"


class HostedModel(_Entry):
    """A hosted LLM reached through litellm from the gateway."""

    backend: Literal["hosted"]
    litellm_model: str = Field(description="litellm model string, e.g. `openai/gpt-4o-mini`.")
    api_base: str | None = None
    api_key_env: str | None = Field(
        default=None,
        description="NAME of the env var holding the provider key; it must match SLM_PROVIDER_KEY_ENV_PATTERN "
                    f"(default `{DEFAULT_KEY_ENV_PATTERN}`) and may never be an `SLM_*` variable.")
    timeout: float = Field(default=60.0, gt=0)
    max_concurrency: int = Field(default=16, ge=1)
    retries: int = Field(default=1, ge=0, le=10)
    input_price_per_million: float | None = Field(
        default=None, ge=0, description="USD per million input tokens (`compare`); default: litellm's price table.")
    output_price_per_million: float | None = Field(
        default=None, ge=0, description="USD per million output tokens (`compare`); default: litellm's price table.")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be the NAME of an environment variable, not a key")
        if value is not None and value.upper().startswith("SLM_"):
            raise ValueError(f"'{value}' is one of the server's own settings (SLM_*), never a provider key")
        return value


class EscalationRule(BaseModel):
    """Send a request straight to `to` when every condition the rule sets holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: str = Field(description="The registry model (local or hosted) that takes a matching request.")
    tools: bool | None = Field(default=None, description="true: the request offers tools it may call.")
    images: bool | None = Field(default=None, description="true: the request's messages hold an image.")
    prompt_tokens_over: int | None = Field(
        default=None, ge=0, description="The prompt is estimated longer than this many tokens (4 characters each).")

    @model_validator(mode="after")
    def _has_a_condition(self) -> EscalationRule:
        if self.tools is None and self.images is None and self.prompt_tokens_over is None:
            raise ValueError("an escalation rule needs a condition: `tools`, `images` or `prompt_tokens_over`")
        return self


class RouterModel(_Entry):
    """A name that picks, per request, the first target predicted to meet a time-to-first-token objective."""

    backend: Literal["router"]
    targets: list[str] = Field(min_length=1, description="Registry models (local or hosted), preferred first.")
    ttft_objective_s: float = Field(default=1.0, gt=0, le=600,
                                    description="Time to first token a target must be predicted to meet.")
    escalate: list[EscalationRule] = Field(default_factory=list,
                                           description="Rules sending a request straight to a larger model.")

    @field_validator("targets")
    @classmethod
    def _target_names(cls, value: list[str]) -> list[str]:
        _valid_names(value)
        if len(set(value)) != len(value):
            raise ValueError("a target is listed twice")
        return value


AnyEntry = LocalModel | HostedModel | RouterModel
ModelEntry = Annotated[AnyEntry, Field(discriminator="backend")]


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelEntry]

    def resolve(self, name: str) -> tuple[str, AnyEntry] | None:
        """Canonical name and entry for a model name or alias."""
        entry = self.models.get(name)
        if entry is not None:
            return name, entry
        for canonical, candidate in self.models.items():
            if name in candidate.aliases:
                return canonical, candidate
        return None

    def local_models(self) -> dict[str, LocalModel]:
        return {n: e for n, e in self.models.items() if isinstance(e, LocalModel)}

    def fallback_chain(self, name: str) -> list[str]:
        """`name`, then its fallbacks in order, each followed by its own (depth first, each model once)."""
        chain: list[str] = []

        def visit(model: str) -> None:
            if model in chain or model not in self.models:
                return
            chain.append(model)
            for fallback in self.models[model].fallbacks:
                visit(fallback)

        visit(name)
        return chain


def _check_names(registry: Registry) -> list[str]:
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, entry in registry.models.items():
        if not NAME_PATTERN.match(name):
            problems.append(f"models.{name}: '{name}' is not a valid model name")
        for label in (name, *entry.aliases):
            if label in seen and seen[label] != name:
                problems.append(f"models.{name}.aliases: '{label}' is already used by '{seen[label]}'")
            seen.setdefault(label, name)
    return problems


def _served_reference(registry: Registry, owner: str, where: str, target: str) -> str | None:
    """A problem when `target` (named at `models.{owner}.{where}`) is not another local or hosted model."""
    entry = registry.models.get(target)
    if entry is None:
        hint = registry.resolve(target)
        extra = f" (it is an alias of '{hint[0]}'; name the model itself)" if hint else ""
        return f"models.{owner}.{where}: '{target}' is not a registry model{extra}"
    if target == owner:
        return f"models.{owner}.{where}: a model cannot name itself"
    if isinstance(entry, RouterModel):
        return f"models.{owner}.{where}: '{target}' is a router; only local or hosted models can be named here"
    return None


def _fallback_cycle(registry: Registry) -> list[str] | None:
    """One cycle of the fallback graph as a path (first model repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(model: str) -> list[str] | None:
        state[model] = 1
        path.append(model)
        for nxt in registry.models[model].fallbacks:
            if nxt not in registry.models:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[model] = 2
        return None

    for model in registry.models:
        if model not in state and (found := visit(model)) is not None:
            return found
    return None


def _check_references(registry: Registry) -> list[str]:
    problems: list[str] = []
    for name, entry in registry.models.items():
        refs: list[tuple[str, str]] = []
        if isinstance(entry, RouterModel):
            if entry.fallbacks:
                problems.append(f"models.{name}.fallbacks: a router falls back through its `targets`; "
                                "list the models there")
            refs += [(f"targets[{i}]", target) for i, target in enumerate(entry.targets)]
            refs += [(f"escalate[{i}].to", rule.to) for i, rule in enumerate(entry.escalate)]
            for i, rule in enumerate(entry.escalate):
                if rule.images and isinstance(registry.models.get(rule.to), LocalModel):
                    problems.append(f"models.{name}.escalate[{i}].to: '{rule.to}' is local, and local models "
                                    "do not read images: it would refuse every request this rule sends it")
        else:
            if len(set(entry.fallbacks)) != len(entry.fallbacks):
                problems.append(f"models.{name}.fallbacks: a model is listed twice")
            refs += [(f"fallbacks[{i}]", fallback) for i, fallback in enumerate(entry.fallbacks)]
        problems += [p for where, target in refs if (p := _served_reference(registry, name, where, target))]
    cycle = _fallback_cycle(registry)
    if cycle is not None:
        problems.append(f"models.{cycle[0]}.fallbacks: fallbacks form a cycle: {' -> '.join(cycle)}")
    return problems


def _format_validation(path: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("local", "hosted", "router"))
        lines.append(f"{path}: {loc}: {err['msg']}")
    return "\n".join(lines)


def parse_registry(data: Any, *, source: str = "<registry>") -> Registry:
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: the top level must be a mapping with a `models:` key")
    models = data.get("models")
    if isinstance(models, dict):
        for entry in models.values():
            if isinstance(entry, dict) and "backend" not in entry:
                entry["backend"] = "local"
    try:
        registry = Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(_format_validation(source, exc)) from None
    problems = _check_names(registry) or _check_references(registry)
    if problems:
        raise RegistryError("\n".join(f"{source}: {p}" for p in problems))
    return registry


def load_registry(path: Path) -> Registry:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read the registry ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    return parse_registry(data, source=str(path))


def _in_package(spec: str, candidate: Path, roots: list[Path]) -> Path | None:
    """`package/file.gguf` inside an installed package (or joined from its parts), found without
    importing anything; the package's directory (or the cache) joins `roots`."""
    pkg_dir = package_dir(candidate.parts[0])
    if pkg_dir is None:
        return None
    roots.append(pkg_dir)
    found = pkg_dir.joinpath(*candidate.parts[1:])
    parted = None if found.exists() or len(candidate.parts) != 2 else parted_model(*candidate.parts)
    if parted is None:
        return found
    try:
        assembled = assemble(parted)
    except (OSError, ValueError) as exc:
        raise RegistryError(f"gguf '{spec}': cannot join the parts of this model: {exc}") from None
    if assembled is None:
        return found
    roots.append(assembled.parent.resolve())
    return assembled


def resolve_gguf(spec: str, *, registry_dir: Path, model_dirs: list[Path]) -> Path:
    """Find the GGUF file an entry names, confined to allowed places.

    Allowed: files inside the registry's own directory, the configured model directories, or an
    installed Python package (`package/file.gguf`). `..`, absolute paths elsewhere and symlinks
    that escape are refused.
    """
    if "\x00" in spec or ".." in Path(spec).parts:
        raise RegistryError(f"gguf '{spec}': '..' is not allowed in model paths")
    candidate = Path(spec)
    roots = [registry_dir.resolve(), *(d.resolve() for d in model_dirs)]
    found: Path | None = None
    if candidate.is_absolute():
        found = candidate
    else:
        for root in roots:
            if (root / candidate).exists():
                found = root / candidate
                break
        if found is None and len(candidate.parts) >= 2:
            found = _in_package(spec, candidate, roots)
    if found is None:
        raise RegistryError(f"gguf '{spec}': no such file in {', '.join(map(str, roots))} or a package")
    real = found.resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise RegistryError(f"gguf '{spec}': outside the allowed model directories")
    if not real.is_file():
        raise RegistryError(f"gguf '{spec}': no such file")
    return real


def check_files(registry: Registry, *, registry_dir: Path, model_dirs: list[Path]) -> list[str]:
    """Problems with the GGUF files of local entries (empty when all resolve)."""
    problems = []
    for name, entry in registry.local_models().items():
        try:
            resolve_gguf(entry.gguf, registry_dir=registry_dir, model_dirs=model_dirs)
        except RegistryError as exc:
            problems.append(f"models.{name}.{exc}")
    return problems


def check_key_envs(registry: Registry, pattern: str = DEFAULT_KEY_ENV_PATTERN) -> list[str]:
    """Problems with the env vars hosted entries name (`api_key_env` must fully match `pattern`)."""
    allowed = re.compile(pattern)
    return [f"models.{name}.api_key_env: '{entry.api_key_env}' is not an allowed provider key variable "
            f"(SLM_PROVIDER_KEY_ENV_PATTERN: {pattern})"
            for name, entry in registry.models.items()
            if isinstance(entry, HostedModel) and entry.api_key_env is not None
            and not allowed.fullmatch(entry.api_key_env)]


def env_key(entry: HostedModel) -> str | None:
    return os.environ.get(entry.api_key_env) if entry.api_key_env else None


def json_schema() -> dict[str, Any]:
    """The registry's JSON schema, committed as `model_registry.schema.json` for editors."""
    schema = Registry.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "slm-server model registry"
    return schema
