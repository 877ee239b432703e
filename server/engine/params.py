"""A sequence's sampling parameters: what the gateway asks and the engine's sampler chain applies.

Carried inside a queued job (`server.queue.messages.Job.params`), defined here so that the engine
never imports the queue.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    grammar: str | None = None  # GBNF, set by the worker from response_format / tools
    grammar_trigger: str | None = None  # the grammar applies once this text appears (tool_choice auto)
