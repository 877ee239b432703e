"""What one request carries from its route into the serving layer, passed explicitly as a parameter.

The route builds a `RequestContext` from what the security middleware left in the request's scope
(the key's `TokenUsage`, when its tokens are limited: `server.security.usage`) and from the
settings (a `Transcript`, when `SLM_LOG_PROMPTS` is on: `server.serving.transcript`), and hands
it to every `Service` call; the service hands it on to the trackers that charge tokens and log text.
An empty context (`RequestContext()`) counts and logs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.security.owner import ANONYMOUS
from server.security.usage import TokenUsage
from server.serving.transcript import Transcript


@dataclass(frozen=True, slots=True)
class RequestContext:
    usage: TokenUsage | None = None  # the key's tokens, when they are limited
    transcript: Transcript | None = None  # the prompt and completion log, when SLM_LOG_PROMPTS is on
    key: str = ANONYMOUS  # the API key's id (`api_keys.key_id()`): its share and class in the fair queue
    queue_notices: bool = False  # a stream may start with `: queue position=...` comments (OpenAI's SSE only)

    def charge(self, tokens: int) -> None:
        """Count `tokens` against the request's key, if it is token-limited."""
        if self.usage is not None:
            self.usage.add(tokens)

    async def reserve(self, tokens: int) -> None:
        """Hold the most the request may use in its key's window before it is queued (RateLimitError
        when that does not fit); nothing when the key is not token-limited."""
        if self.usage is not None:
            await self.usage.reserve(tokens)
