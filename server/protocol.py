"""OpenAI wire models for requests, with the spec's limits.

Every parameter of the spec is honoured, passed on to a hosted model's provider, or refused by a
local model with a 400 naming it (`UNSUPPORTED_*`, `ChatMessage.media_parts`); fields the spec does
not know are kept (`model_extra`): a hosted model's provider gets them, a local model ignores them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.errors import InvalidRequestError
from server.protocol_tools import NamedToolChoice, ResponseFormat, Tool
from server.queue import priority as priority_class
from server.schema_limits import check_request
from server.tool_format import history_message

MAX_MESSAGES = 4096
MAX_TEXT_CHARS = 1_000_000
# A token id is a llama_token (int32): ASCII digits only (str.isdigit() also passes '²', which int() refuses).
TOKEN_ID = re.compile(r"[0-9]{1,10}")
MAX_TOKEN_ID = 2**31 - 1

# Provider settings a client must never choose (hosted entries take them from the registry only).
PROVIDER_FIELDS = frozenset({
    "api_base", "base_url", "api_key", "api_version", "api_type", "organization", "custom_llm_provider",
    "litellm_params", "extra_headers", "azure_ad_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "aws_region_name", "vertex_project", "vertex_location", "vertex_credentials",
})


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


# What a local model would need to read each media part type, for its refusal.
MEDIA_INPUT = {"image_url": "image", "input_audio": "audio", "file": "file"}


class MediaPart(BaseModel):
    """An image, audio or file part: passed to a hosted provider as sent; a local model refuses it."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file"]

    @model_validator(mode="after")
    def _has_its_object(self) -> MediaPart:
        if not isinstance((self.model_extra or {}).get(self.type), dict):
            raise ValueError(f"a '{self.type}' part needs an object named '{self.type}'")
        return self


class RefusalPart(BaseModel):
    """An assistant's earlier refusal, sent back as history."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["refusal"]
    refusal: str = Field(max_length=MAX_TEXT_CHARS)


ContentPart = Annotated[TextPart | MediaPart | RefusalPart, Field(discriminator="type")]


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str = ""

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, value: str) -> str:
        """The arguments are written back into the prompt as JSON, so they must be JSON."""
        if value:
            try:
                json.loads(value)
            except ValueError:
                raise ValueError("the arguments must be a JSON value encoded as a string") from None
            except RecursionError:
                raise ValueError("the arguments are nested too deeply") from None
        return value


class AssistantToolCall(BaseModel):
    """A call an assistant made earlier in the conversation (the client sends it back as history)."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None

    @field_validator("content")
    @classmethod
    def _content_size(cls, value: str | list[ContentPart] | None) -> str | list[ContentPart] | None:
        size = len(value) if isinstance(value, str) else sum(len(_part_text(p)) for p in value or [])
        if size > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters are allowed")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(_part_text(part) for part in self.content)

    def media_parts(self) -> list[tuple[int, str]]:
        """(position, type) of each part that is not text."""
        if not isinstance(self.content, list):
            return []
        return [(i, part.type) for i, part in enumerate(self.content) if isinstance(part, MediaPart)]

    def for_provider(self) -> dict[str, Any]:
        """The message as the client sent it (content parts, tool calls, tool_call_id...), for a hosted model."""
        return self.model_dump(exclude_none=True, by_alias=True)

    def for_template(self) -> dict[str, Any]:
        role = "system" if self.role == "developer" else self.role
        if role == "assistant" and self.tool_calls:
            return history_message({"content": self.text(),
                                    "tool_calls": [call.model_dump() for call in self.tool_calls]})
        return {"role": role, "content": self.text()}


def _part_text(part: TextPart | MediaPart | RefusalPart) -> str:
    if isinstance(part, TextPart):
        return part.text
    return part.refusal if isinstance(part, RefusalPart) else ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampling(BaseModel):
    # strict: `"max_tokens": true` or `"64"` is a 400, as OpenAI answers, never coerced
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None
    # documented extensions (llama.cpp / vLLM names)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None
    # slm-server's extension: the request's class in the fair queue (`server.queue.priority`)
    priority: int | str | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> int | None:
        return priority_class.parse(value)

    def priority_class(self) -> int | None:
        """The class the client asked for (an int once validated), None when it asked for none."""
        return self.priority if isinstance(self.priority, int) else None

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not TOKEN_ID.fullmatch(token) or int(token) > MAX_TOKEN_ID:
                shown = token if len(token) <= 20 else token[:20] + "..."
                raise ValueError(f"keys must be token ids (decimal integers from 0 to {MAX_TOKEN_ID}), "
                                 f"got {json.dumps(shown, ensure_ascii=False)}")
            if not -100 <= bias <= 100:
                raise ValueError("biases must be between -100 and 100")
        return value

    def logit_bias_ids(self) -> dict[int, float]:
        return {int(k): v for k, v in (self.logit_bias or {}).items()}

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return value

    @model_validator(mode="after")
    def _no_provider_fields(self) -> _Sampling:
        extra = self.model_extra or {}
        nested = extra.get("extra_body")
        names = [*extra, *(f"extra_body.{k}" for k in (nested if isinstance(nested, dict) else ()))]
        for name in names:
            if name.rsplit(".", 1)[-1].lower() in PROVIDER_FIELDS:
                raise InvalidRequestError(f"The parameter '{name}' cannot be set by clients.", param=name)
        return self

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def refuse_unsupported(self, names: dict[str, Any], model: str) -> None:
        """A local model's refusal of spec parameters it cannot honour (a hosted model's provider decides)."""
        extra = self.model_extra or {}
        for name, harmless in names.items():
            if name in extra and extra[name] is not None and extra[name] != harmless:
                raise InvalidRequestError(
                    f"The parameter '{name}' is not supported by the local model '{model}'.", param=name
                )


# Parameters of the spec local models do not serve, with the value that means "not used".
UNSUPPORTED_CHAT: dict[str, Any] = {
    "functions": [], "function_call": "none", "audio": None, "modalities": ["text"], "prediction": None,
    "web_search_options": None, "reasoning_effort": None, "thinking": None,
}
UNSUPPORTED_COMPLETION: dict[str, Any] = {"echo": False, "best_of": 1, "suffix": None}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _schemas_within_bounds(cls, data: Any) -> Any:
        """Schemas the grammar could not handle safely are refused before anything else reads them."""
        check_request(data)
        return data

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        if self.tool_choice not in (None, "none") and not self.tools:
            raise InvalidRequestError("'tool_choice' is only allowed when 'tools' are given.", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise InvalidRequestError(f"No tool named '{self.tool_choice.function.name}' was given.",
                                          param="tool_choice")
        return self

    def tool_mode(self) -> Any:
        """None when no tool may be called, else 'auto', 'required' or the named-choice dict."""
        if not self.tools:
            return None
        choice = self.tool_choice if self.tool_choice is not None else "auto"
        if choice == "none":
            return None
        return choice.model_dump() if isinstance(choice, NamedToolChoice) else choice

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequestError("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        return self

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _prompt_size(cls, value: str | list[str]) -> str | list[str]:
        if sum(map(len, [value] if isinstance(value, str) else value)) > MAX_TEXT_CHARS:
            raise ValueError(f"at most {MAX_TEXT_CHARS} characters are allowed")
        return value

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise InvalidRequestError("Only a single prompt per request is supported.", param="prompt")
        return self.prompt[0]


EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, value: EmbeddingInput) -> EmbeddingInput:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("at least one input is required")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs are allowed")
        if any(isinstance(i, str) and not i for i in items):
            raise ValueError("inputs must not be empty strings")
        return value

    def input_list(self) -> list[str] | list[list[int]]:
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]
        return self.input  # type: ignore[return-value]
