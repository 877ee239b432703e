"""Which models one request is offered to, in order, and what to tell the client about it.

A plain model is tried first, then its `fallbacks` (each followed by its own, see
`Registry.fallback_chain`). A router's request goes to the target it chose (an escalation rule's
model, else the first target predicted to meet its objective, else its last target), then that
model's fallbacks, then the router's other targets (and theirs) in order.

The next candidate is tried only when the previous one could not take the request before the
first byte reached the client: unavailable (503: no worker, no queue), overloaded (429: queue full,
hosted concurrency or upstream rate limit) or failing (500, 502, 504). A 400 (a parameter a hosted
model cannot honour, a prompt over a local context) moves on only when the server picked that
candidate (a fallback, or a router's choice); for the model the client named it is the client's
answer. A draining gateway refuses at once. When every candidate fails, the client hears the first
failure that says the service could not serve, else the first refusal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.errors import InvalidRequestError, SlmError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.registry import AnyEntry, Registry, RouterModel
from server.serving.routing import Route, Traits, estimate_tokens

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Plan:
    candidates: tuple[str, ...]
    router: str | None = None
    route: Route | None = None

    def headers(self, served: str, backend: str) -> dict[str, str]:
        """`x-slm-model` / `x-slm-backend` name who served; the others say how it came to be."""
        out = {"x-slm-model": served, "x-slm-backend": backend}
        if served != self.candidates[0]:
            out["x-slm-fallback-from"] = self.candidates[0]
        if self.router is not None and self.route is not None:
            out["x-slm-router"] = self.router
            out["x-slm-route"] = self.route.reason
        return out


def plan_for(registry: Registry, name: str, entry: AnyEntry, route: Callable[[str, RouterModel], Route]) -> Plan:
    if not isinstance(entry, RouterModel):
        return Plan(tuple(registry.fallback_chain(name)))
    chosen = route(name, entry)
    order: list[str] = []
    for model in (chosen.model, *entry.targets):
        order += [m for m in registry.fallback_chain(model) if m not in order]
    return Plan(tuple(order), router=name, route=chosen)


def traits_of(req: ChatCompletionRequest | CompletionRequest, payload: dict[str, Any]) -> Traits:
    chars = _text_chars(payload.get("messages") if "messages" in payload else payload.get("prompt"))
    tools = False
    if isinstance(req, ChatCompletionRequest) and req.tool_mode() is not None and req.tools:
        tools = True
        chars += len(json.dumps([t.model_dump(exclude_none=True) for t in req.tools]))
    images = isinstance(req, ChatCompletionRequest) and any(
        kind == "image_url" for message in req.messages for _, kind in message.media_parts())
    return Traits(prompt_tokens=estimate_tokens(chars), tools=tools, images=images)


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def falls_through(exc: SlmError, *, chosen_by_server: bool) -> bool:
    """Whether the next candidate may be tried after `exc` (raised before the first byte)."""
    if exc.code == "shutting_down":
        return False
    if exc.status in RETRYABLE_STATUSES:
        return True
    return chosen_by_server and isinstance(exc, InvalidRequestError)


def reported(failures: list[SlmError]) -> SlmError:
    """The failure the client hears when no candidate could serve."""
    for exc in failures:
        if exc.status in RETRYABLE_STATUSES:
            return exc
    return failures[0]
