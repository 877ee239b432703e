"""The tokens one request used, carried from the serving layer (which knows them) to the limiter.

For a request whose key has a tokens-per-minute limit, the security middleware opens a `TokenUsage`
and sets it in the `current` context variable for the rest of that request (the handler and its
streamed body run in that context or a copy of it). The serving layer adds the usage of each
finished generation or embedding; when the response is over, the middleware adds the total to the
key's window in Redis. Outside such a request (no keys, no TPM limit, a service driven directly
by tests) `current` is None and nothing is counted.

Before a request is queued the serving layer also `reserve`s the most it may use (its prompt,
estimated, plus `n` x `max_tokens`) against the key's window, so that one request cannot spend far
past the limit; when the response is over the reservation is replaced by what was used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar


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


current: ContextVar[TokenUsage | None] = ContextVar("slm_token_usage", default=None)


async def reserve(tokens: int) -> None:
    """Hold `tokens` of the current request's key's window before generating (RateLimitError when they
    do not fit); a second call for the same request holds only what the first did not."""
    usage = current.get()
    if usage is None or usage.reserver is None or tokens <= usage.reserved:
        return
    await usage.reserver(tokens - usage.reserved)
    usage.reserved = tokens


def charge(tokens: int) -> None:
    """Count `tokens` against the current request's key, if it is token-limited."""
    usage = current.get()
    if usage is not None:
        usage.add(tokens)
