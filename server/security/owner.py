"""Whose request this is, for what a request stores (stored responses are scoped to the API key).

The security middleware puts the id of the request's API key (`api_keys.key_id()`, a digest, never
the key) in the ASGI scope's `state`; without configured keys every request is `anonymous`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

STATE_KEY = "slm_key_id"
ANONYMOUS = "anonymous"


def put(scope: MutableMapping[str, Any], kid: str | None) -> None:
    if kid is not None:
        scope.setdefault("state", {})[STATE_KEY] = kid


def of(scope: Mapping[str, Any]) -> str:
    kid = scope.get("state", {}).get(STATE_KEY)
    return kid if isinstance(kid, str) else ANONYMOUS
