"""What a hosted model's provider gets from one request: litellm keyword arguments and `extra_body`.

Every parameter of the spec the client set goes to litellm by its name (litellm maps it for the
provider; the provider, or litellm on its behalf, refuses what it cannot take: that refusal is the
client's 400). Nothing is refused here: the gateway never invents a refusal for a hosted model.

Fields the client added beyond the spec (the openai client's `extra_body`, merged into the request's
top level), our llama.cpp extensions when set (`top_k`, `min_p`, `repeat_penalty`), and the spec
fields litellm would keep for itself (`user`, `metadata`) reach the provider only inside litellm's
`extra_body`, never as litellm keyword arguments (but `thinking`, which litellm maps for the providers
that take it and is told to pass on to the others): litellm acts on some names of its own
(`mock_response`, `api_base`, `custom_llm_provider`, `caching`...), and a client must not steer it.
Provider settings (`api_base`, keys...) were refused when the request was parsed
(`server.protocol.PROVIDER_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.protocol import ChatCompletionRequest, CompletionRequest

# spec parameters that are not modelled (kept in `model_extra`) and that litellm forwards by name
CHAT_SPEC_EXTRAS: tuple[str, ...] = ("modalities", "prediction", "service_tier", "store", "reasoning_effort", "audio",
                    "web_search_options", "functions", "function_call", "verbosity")
COMPLETION_SPEC_EXTRAS: tuple[str, ...] = ("echo", "best_of", "suffix")
# the neutral value of each llama.cpp-only sampling knob: set to anything else, it goes in extra_body
LOCAL_ONLY = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


@dataclass(frozen=True)
class HostedParams:
    """The parameters a client set explicitly; `options`: other spec parameters by their litellm name."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_request(cls, req: ChatCompletionRequest | CompletionRequest) -> HostedParams:
        options: dict[str, Any] = {}
        extra_body: dict[str, Any] = {}
        for name in ("n", "logit_bias"):
            if getattr(req, name) is not None:
                options[name] = getattr(req, name)
        for name, neutral in LOCAL_ONLY.items():
            value = getattr(req, name)
            if value is not None and value != neutral:
                extra_body[name] = value
        if req.user is not None:
            extra_body["user"] = req.user
        response_format = None
        if isinstance(req, ChatCompletionRequest):
            _chat_options(req, options)
            if req.response_format is not None:
                response_format = req.response_format.model_dump(exclude_none=True, by_alias=True)
            spec = CHAT_SPEC_EXTRAS
        else:
            if req.logprobs is not None:
                options["logprobs"] = req.logprobs
            spec = COMPLETION_SPEC_EXTRAS
        for name, value in (req.model_extra or {}).items():
            if name == "thinking":  # Anthropic's: litellm maps it for providers that take it, else passes it on
                options.update(thinking=value, allowed_openai_params=["thinking"])
            elif name == "extra_body" and isinstance(value, dict):
                extra_body.update(value)  # a client that nested them itself
            elif name in spec:
                options[name] = value
            else:
                extra_body[name] = value
        return cls(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                   stop=tuple(req.stop_list()), seed=req.seed, presence_penalty=req.presence_penalty,
                   frequency_penalty=req.frequency_penalty, response_format=response_format, options=options,
                   extra_body=extra_body)

    def kwargs(self) -> dict[str, Any]:
        """litellm's keyword arguments (never a name from the client's extra fields)."""
        out = {k: v for k, v in self.__dict__.items()
               if v is not None and k not in ("stop", "options", "extra_body")}
        if self.stop:
            out["stop"] = list(self.stop)
        out.update(self.options)
        if self.extra_body:
            out["extra_body"] = dict(self.extra_body)
        return out


def _chat_options(req: ChatCompletionRequest, options: dict[str, Any]) -> None:
    if req.max_completion_tokens is not None:
        options["max_completion_tokens"] = req.max_completion_tokens
    if req.logprobs is not None:
        options["logprobs"] = req.logprobs
    if req.top_logprobs is not None:
        options["top_logprobs"] = req.top_logprobs
    if req.tools is not None:
        options["tools"] = [tool.model_dump(exclude_none=True) for tool in req.tools]
    if req.tool_choice is not None:
        choice = req.tool_choice
        options["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
    if req.parallel_tool_calls is not None:
        options["parallel_tool_calls"] = req.parallel_tool_calls


def provider_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The conversation as the client sent it: content parts of every type, tool calls and results."""
    return [message.for_provider() for message in req.messages]
