"""Per-key queue settings: a key's weight in the fair queue, its default priority class, the highest it
may ask for, and its share of a model's `max_queue`.

The defaults come from the settings (`SLM_PRIORITY_DEFAULT`, `SLM_PRIORITY_MAX`, `SLM_QUEUE_KEY_SHARE`,
weight 1); `SLM_QUEUE_POLICY_FILE` names a YAML file that overrides them, per key and for every key:

    default: {weight: 1, priority: default, max_priority: default, max_queue_share: 1.0}
    keys:
      "sha256:<hex digest of the key>": {weight: 3, priority: interactive, max_priority: 9}
      "sk-a-plain-key": {weight: 1, priority: batch, max_queue_share: 0.5}
      anonymous: {weight: 1}          # requests when no API keys are configured

A key is named as in the keys file (the key itself or `sha256:<hex>`); only its `key_id` is kept.
The file is re-read when its content changes (looked at most every `interval_s`, when a request
asks); an invalid edit keeps the previous policy and is logged.

A request's `priority` above its key's `max_priority` is refused (400 naming `priority`), never
silently lowered: a client that asked for more than it may have is told so.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from server.errors import InvalidRequestError
from server.queue import priority as priorities
from server.security.api_keys import DIGEST_PREFIX, digest, key_id
from server.security.owner import ANONYMOUS

log = logging.getLogger("slm.security")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the entry, never a key."""


@dataclass(frozen=True)
class KeyPolicy:
    weight: float = 1.0
    priority: int = priorities.DEFAULT
    max_priority: int = priorities.DEFAULT
    max_queue_share: float = 1.0


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(default=None, ge=0.05, le=1000)
    priority: int | str | None = None
    max_priority: int | str | None = None
    max_queue_share: float | None = Field(default=None, gt=0, le=1)

    @field_validator("priority", "max_priority")
    @classmethod
    def _class(cls, value: int | str | None) -> int | None:
        try:
            return priorities.parse(value)
        except InvalidRequestError as exc:
            raise ValueError(exc.message) from None

    def over(self, base: KeyPolicy) -> KeyPolicy:
        values: dict[str, Any] = {k: v for k, v in self.model_dump().items() if v is not None}
        merged = KeyPolicy(**{**base.__dict__, **values})
        if merged.priority > merged.max_priority:
            raise ValueError("priority is above max_priority")
        return merged


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: _Entry = Field(default_factory=_Entry)
    keys: dict[str, _Entry] = Field(default_factory=dict)


@dataclass(frozen=True)
class QueuePolicy:
    default: KeyPolicy = field(default_factory=KeyPolicy)
    keys: dict[str, KeyPolicy] = field(default_factory=dict)  # key_id -> its policy

    def for_key(self, kid: str) -> KeyPolicy:
        return self.keys.get(kid, self.default)

    def priority_for(self, kid: str, asked: int | None) -> int:
        """The class a request of key `kid` runs in: what it asked, else its key's default."""
        policy = self.for_key(kid)
        if asked is None:
            return policy.priority
        if asked > policy.max_priority:
            raise InvalidRequestError(
                f"'priority' {asked} is above what this API key may ask for ({policy.max_priority}).",
                param="priority", code="priority_not_allowed")
        return asked

    @classmethod
    def parse(cls, text: str, where: str, base: KeyPolicy) -> QueuePolicy:
        try:
            raw = yaml.safe_load(text) or {}
            spec = _File.model_validate(raw)
            default = spec.default.over(base)
            found = {_kid(name, where): entry.over(default) for name, entry in spec.keys.items()}
        except (yaml.YAMLError, ValidationError, ValueError) as exc:
            raise PolicyError(f"{where}: {_brief(exc)}") from None
        return cls(default, found)


def _kid(name: str, where: str) -> str:
    if name == ANONYMOUS:
        return ANONYMOUS
    if name.startswith(DIGEST_PREFIX):
        try:
            return key_id(bytes.fromhex(name[len(DIGEST_PREFIX):]))
        except ValueError:
            raise PolicyError(f"{where}: a '{DIGEST_PREFIX}' key needs 64 hex digits") from None
    return key_id(digest(name.encode()))


def _brief(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"][:1]) + (".<key>" if first["loc"][:1] == ("keys",) else "")
        return f"{loc}: {first['msg']}"  # never the key itself
    return str(exc).splitlines()[0]


class PolicySource:
    """The current policy: the settings' defaults, overridden by the file when one is given; the file is
    re-read when its content changed, looked at most every `interval_s`."""

    def __init__(self, base: KeyPolicy, path: Path | None = None, *, interval_s: float = 1.0) -> None:
        self.base = base
        self.path = path
        self.interval_s = interval_s
        self._policy = QueuePolicy(base)
        self._digest: str | None = None
        self._checked = -interval_s
        if path is not None:
            text = self._read()
            if text is None:
                raise PolicyError(f"{path}: cannot read the queue policy file")
            self._policy = QueuePolicy.parse(text, str(path), base)
            self._digest = hashlib.sha256(text.encode()).hexdigest()
            self._checked = time.monotonic()

    def _read(self) -> str | None:
        assert self.path is not None
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def current(self) -> QueuePolicy:
        if self.path is None or time.monotonic() - self._checked < self.interval_s:
            return self._policy
        self._checked = time.monotonic()
        text = self._read()
        if text is None:
            return self._policy
        found = hashlib.sha256(text.encode()).hexdigest()
        if found != self._digest:
            self._digest = found
            try:
                self._policy = QueuePolicy.parse(text, str(self.path), self.base)
                log.info("queue policy reloaded from %s (%d keys)", self.path, len(self._policy.keys))
            except PolicyError as exc:
                log.error("queue policy not reloaded: %s", exc)
        return self._policy
