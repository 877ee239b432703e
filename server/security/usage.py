"""The tokens one request used, carried from the serving layer (which knows them) to the limiter.

For a request whose key has a tokens-per-minute limit, the security middleware opens a `TokenUsage`
and puts it in the ASGI scope's `state` (`put`; Starlette's `request.state`). The route reads it
(`of`) into the request's `RequestContext` (`server.serving.context`), which hands it explicitly to
the serving layer; that adds the usage of each finished generation or embedding, and when the
response is over the middleware adds the total to the key's window in Redis. Outside such a request
(no keys, no TPM limit) there is no `TokenUsage` and nothing is counted.

Before a request is queued the serving layer also `reserve`s the most it may use (its prompt,
estimated, plus `n` x `max_tokens`) against the key's window, so that one request cannot spend far
past the limit; when the response is over the reservation is replaced by what was used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

STATE_KEY = "slm_token_usage"  # the key in the ASGI scope's `state`


class TokenUsage:
    """Tokens used so far by one request (prompt + completion, every choice), and how many its key's
    window holds for it in advance (`reserved`, through `reserver`, set by the middleware)."""

    __slots__ = ("reserved", "reserver", "tokens")

    def __init__(self, reserver: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.tokens = 0
        self.reserved = 0
        self.reserver = reserver

    def add(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens += tokens

    def settle(self) -> tuple[int, int]:
        """(tokens used, tokens reserved), leaving both zero (so they are accounted for once)."""
        reserved, self.reserved = self.reserved, 0
        return self.take(), reserved

    def take(self) -> int:
        """The tokens counted so far, leaving zero (so a total is charged once)."""
        tokens, self.tokens = self.tokens, 0
        return tokens

    async def reserve(self, tokens: int) -> None:
        """Hold `tokens` of the key's window before generating (RateLimitError when they do not fit);
        a second call for the same request holds only what the first did not."""
        if self.reserver is None or tokens <= self.reserved:
            return
        await self.reserver(tokens - self.reserved)
        self.reserved = tokens


def put(scope: MutableMapping[str, Any], usage: TokenUsage) -> None:
    """Hand `usage` to the app through the request's scope (`request.state`)."""
    scope.setdefault("state", {})[STATE_KEY] = usage


def of(scope: Mapping[str, Any]) -> TokenUsage | None:
    """The request's `TokenUsage`, if its key is token-limited."""
    found = scope.get("state", {}).get(STATE_KEY)
    return found if isinstance(found, TokenUsage) else None
