"""What every backend hands the gateway: a generation, a backend-neutral stream of deltas and a result.

`backends/local.py` (a queued job a worker decodes) and `backends/hosted.py` (litellm, in the
gateway) both produce a `Generation`; `serving/` turns it into OpenAI bodies and SSE frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Result:
    finish_reason: str = "stop"
    finish_reasons: dict[int, str] = field(default_factory=dict)  # per choice when n > 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    queue_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Delta:
    """Text (and its tokens' logprobs) for one choice; a `finish_reason` closes that choice.

    A hosted model's deltas may also carry reasoning text, a refusal, and tool call fragments as
    OpenAI streams them (`index`, `id`, `type` and the name first, then pieces of the arguments).
    """

    index: int = 0
    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    reasoning: str = ""
    refusal: str = ""
    tool_calls: list[dict[str, Any]] | None = None

    def carries(self) -> bool:
        """Whether there is anything in it for the client besides a finish."""
        return bool(self.text or self.logprobs or self.reasoning or self.refusal or self.tool_calls)


class Generation(Protocol):
    result: Result
    redelivered: str | None

    async def start(self) -> None: ...
    def deltas(self) -> AsyncIterator[str | Delta]: ...
    def buffered(self) -> bool: ...  # more of the answer is already here: `deltas()` goes on without waiting
    async def cancel(self) -> None: ...
    async def close(self) -> None: ...


def as_delta(item: str | Delta) -> Delta:
    return item if isinstance(item, Delta) else Delta(0, item)
