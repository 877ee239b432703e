"""Anthropic Messages API request models (`POST /v1/messages`, `/v1/messages/count_tokens`).

Fields Anthropic defines and this server serves are modelled; any other field is a 400 naming it
(`extra="forbid"`, as Anthropic answers unknown fields). `cache_control` is accepted wherever
Anthropic allows it and ignored: local models reuse prompt prefixes by themselves. Server tools
(`web_search_*`, `bash_*`, ...), `document`, `search_result` and other block types are refused by
name; see `docs/architecture.md` for the list and the reasons.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.errors import InvalidRequestError
from server.protocol import MAX_MESSAGES, MAX_TEXT_CHARS

CacheControl = dict[str, Any] | None  # accepted, ignored


class _Wire(BaseModel):
    # strict: `"max_tokens": "64"` or `true` is a 400, never coerced (as Anthropic answers)
    model_config = ConfigDict(extra="forbid", strict=True)


class TextBlock(_Wire):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)
    cache_control: CacheControl = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(min_length=1)


class UrlSource(_Wire):
    type: Literal["url"]
    url: str = Field(min_length=1, max_length=8192)


class ImageBlock(_Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: CacheControl = None

    def data_url(self) -> str:
        """The image as OpenAI's `image_url` names it (a `data:` URL for base64 sources)."""
        if isinstance(self.source, UrlSource):
            return self.source.url
        return f"data:{self.source.media_type};base64,{self.source.data}"


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1, max_length=128)
    input: dict[str, Any]
    cache_control: CacheControl = None


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=256)
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None
    cache_control: CacheControl = None


class ThinkingBlock(_Wire):
    type: Literal["thinking"]
    thinking: str = Field(max_length=MAX_TEXT_CHARS)
    signature: str = ""


class RedactedThinkingBlock(_Wire):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                  Field(discriminator="type")]
# which blocks each role may send (Anthropic's rule: results and images come from the user)
ROLE_BLOCKS = {"user": ("text", "image", "tool_result"),
               "assistant": ("text", "tool_use", "thinking", "redacted_thinking")}


class InputMessage(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[Block]

    @model_validator(mode="after")
    def _blocks_of_its_role(self) -> InputMessage:
        if isinstance(self.content, list):
            for block in self.content:
                if block.type not in ROLE_BLOCKS[self.role]:
                    raise ValueError(f"a '{block.type}' block cannot be sent in a '{self.role}' message")
        return self


class CustomTool(_Wire):
    type: Literal["custom"] | None = None
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl = None

    @field_validator("input_schema")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError("the input schema must have 'type': 'object'")
        return value


class _Choice(_Wire):
    disable_parallel_tool_use: bool | None = None


class AutoChoice(_Choice):
    type: Literal["auto"]


class AnyChoice(_Choice):
    type: Literal["any"]


class ToolChoiceNamed(_Choice):
    type: Literal["tool"]
    name: str


class NoneChoice(_Wire):
    type: Literal["none"]


ToolChoice = Annotated[AutoChoice | AnyChoice | ToolChoiceNamed | NoneChoice, Field(discriminator="type")]


class ThinkingEnabled(_Wire):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1024)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(_Wire):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingBetweenTools(_Wire):
    type: Literal["between_tools"]


class ThinkingDisabled(_Wire):
    type: Literal["disabled"]


Thinking = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingBetweenTools | ThinkingDisabled,
                     Field(discriminator="type")]


class JsonOutputFormat(_Wire):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Wire):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JsonOutputFormat | None = None


class Metadata(_Wire):
    user_id: str | None = Field(default=None, max_length=256)


class _Conversation(_Wire):
    """What both routes read: the model, the conversation, the tools."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[CustomTool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    cache_control: CacheControl = None

    @model_validator(mode="before")
    @classmethod
    def _server_tools_named(cls, data: Any) -> Any:
        """A server tool (`web_search_20250305`, `bash_20250124`...) is refused by its type, not as a
        custom tool missing its `input_schema`."""
        tools = data.get("tools") if isinstance(data, dict) else None
        for i, tool in enumerate(tools if isinstance(tools, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in (None, "custom"):
                raise InvalidRequestError(f"tools.{i}.type: the server tool '{kind}' is not served here; only "
                                          "custom tools (name, description, input_schema) are.",
                                          param=f"tools.{i}.type")
        return data

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "\n\n".join(block.text for block in self.system)


class MessagesRequest(_Conversation):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    service_tier: Literal["auto", "standard_only"] | None = None  # one tier here: both are what it serves
    priority: int | str | None = None  # slm-server's extension: the fair queue's class (`server.queue.priority`)

    @model_validator(mode="after")
    def _budget_under_max_tokens(self) -> MessagesRequest:
        if isinstance(self.thinking, ThinkingEnabled) and self.thinking.budget_tokens >= self.max_tokens:
            raise InvalidRequestError("thinking.budget_tokens: must be less than max_tokens.",
                                      param="thinking.budget_tokens")
        return self


class CountTokensRequest(_Conversation):
    """`/v1/messages/count_tokens`: the conversation only, no sampling."""
