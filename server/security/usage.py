"""The tokens one request used, carried from the serving layer (which knows them) to the limiter.

For a request whose key has a tokens-per-minute limit, the security middleware opens a `TokenUsage`
and sets it in the `current` context variable for the rest of that request (the handler and its
streamed body run in that context or a copy of it). The serving layer adds the usage of each
finished generation or embedding; when the response is over, the middleware adds the total to the
key's window in Redis. Outside such a request (no keys, no TPM limit, a service driven directly
by tests) `current` is None and nothing is counted.
"""

from __future__ import annotations

from contextvars import ContextVar


class TokenUsage:
    """Tokens used so far by one request (prompt + completion, every choice)."""

    __slots__ = ("tokens",)

    def __init__(self) -> None:
        self.tokens = 0

    def add(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens += tokens

    def take(self) -> int:
        """The tokens counted so far, leaving zero (so a total is charged once)."""
        tokens, self.tokens = self.tokens, 0
        return tokens


current: ContextVar[TokenUsage | None] = ContextVar("slm_token_usage", default=None)


def charge(tokens: int) -> None:
    """Count `tokens` against the current request's key, if it is token-limited."""
    usage = current.get()
    if usage is not None:
        usage.add(tokens)
