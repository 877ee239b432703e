"""The Responses API's request (`POST /v1/responses`), with the spec's limits.

Top-level parameters are typed here; `input` items, `tools` and `text.format` are read by
`server.responses.items`, which turns them into the one internal request (a chat request) naming
the offending parameter (`input[2].content[0].type`, `tools[0].type`) when one is not served.
Parameters the server does not serve are refused by name (`UNSUPPORTED`), never ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.errors import InvalidRequestError
from server.protocol import MAX_MESSAGES, MAX_TEXT_CHARS, PROVIDER_FIELDS

MAX_METADATA = 16  # the spec: at most 16 pairs, keys up to 64 characters, values up to 512

# Spec parameters not served, with the values that mean "not used" (anything else is a 400 naming it).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "conversation": (None,),  # conversations are a separate API; previous_response_id is served
    "prompt": (None,),  # stored prompt templates live on OpenAI's side
    "include": (None, []),  # encrypted reasoning, file search results, logprobs...: nothing to include
    "max_tool_calls": (None,),  # only built-in tools count against it, and none is served
    "top_logprobs": (None, 0),
    "service_tier": (None, "auto", "default"),
    "context_management": (None, []),
    "prompt_cache_retention": (None,),
    "prompt_cache_options": (None,),  # the worker keeps a prefix while its slot holds it, no longer
    "moderation": (None,),  # no moderation model runs here
}


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool | None = None  # there is no obfuscation to include or leave out


class ResponsesRequest(BaseModel):
    # strict: `"max_output_tokens": "64"` is a 400, as OpenAI answers, never coerced
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=200)
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: Reasoning | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = None  # a hint; the worker reuses a held prefix anyway
    priority: int | str | None = None  # slm-server's extension: the fair queue's class (`server.queue.priority`)

    @field_validator("input")
    @classmethod
    def _input_bounds(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters are allowed")
        if isinstance(value, list) and len(value) > MAX_MESSAGES:
            raise ValueError(f"at most {MAX_MESSAGES} items are allowed")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if len(value) > MAX_METADATA:
                raise ValueError(f"at most {MAX_METADATA} key-value pairs are allowed")
            if any(len(k) > 64 for k in value) or any(len(v) > 512 for v in value.values()):
                raise ValueError("keys are at most 64 characters and values at most 512")
        return value

    def refuse_unsupported(self) -> None:
        extra = self.model_extra or {}
        for name in extra:
            if name.lower() in PROVIDER_FIELDS:
                raise InvalidRequestError(f"The parameter '{name}' cannot be set by clients.", param=name)
        for name, harmless in UNSUPPORTED.items():
            if name in extra and extra[name] not in harmless:
                raise InvalidRequestError(f"The parameter '{name}' is not supported by this server.", param=name)
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                      param="stream_options")
        if self.input is None and self.previous_response_id is None:
            raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
        if self.reasoning is not None and self.reasoning.summary is not None:
            raise InvalidRequestError("Reasoning summaries are not produced by this server.",
                                      param="reasoning.summary")

    @property
    def stores(self) -> bool:
        """`store` defaults to true, as in the spec."""
        return self.store is not False
