"""Which models a request is offered to, when the next one is tried, and what the client is told."""

from __future__ import annotations

from server.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.registry import RouterModel, parse_registry
from server.serving.dispatch import falls_through, plan_for, reported, traits_of
from server.serving.routing import Route

REGISTRY = parse_registry({"models": {
    "small": {"gguf": "x.gguf", "fallbacks": ["big"]},
    "medium": {"gguf": "y.gguf", "fallbacks": ["small"]},
    "big": {"backend": "hosted", "litellm_model": "openai/big"},
    "auto": {"backend": "router", "targets": ["small", "medium", "big"]},
}})


def never(name: str, entry: RouterModel) -> Route:
    raise AssertionError("only routers are routed")


def test_a_plain_model_is_tried_then_its_fallback_chain() -> None:
    plan = plan_for(REGISTRY, "medium", REGISTRY.models["medium"], never)
    assert plan.candidates == ("medium", "small", "big") and plan.router is None
    assert plan.headers("medium", "local") == {"x-slm-model": "medium", "x-slm-backend": "local"}
    assert plan.headers("big", "hosted") == {"x-slm-model": "big", "x-slm-backend": "hosted",
                                             "x-slm-fallback-from": "medium"}


def test_a_router_tries_its_choice_then_its_fallbacks_then_the_other_targets() -> None:
    plan = plan_for(REGISTRY, "auto", REGISTRY.models["auto"], lambda name, entry: Route("medium", "objective"))
    assert plan.candidates == ("medium", "small", "big") and plan.router == "auto"
    assert plan.headers("medium", "local") == {"x-slm-model": "medium", "x-slm-backend": "local",
                                               "x-slm-router": "auto", "x-slm-route": "objective"}
    plan = plan_for(REGISTRY, "auto", REGISTRY.models["auto"], lambda name, entry: Route("big", "last_target"))
    assert plan.candidates == ("big", "small", "medium")
    assert plan.headers("small", "local")["x-slm-fallback-from"] == "big"


def test_unavailable_overloaded_and_failing_fall_through_but_not_draining() -> None:
    for exc in (ServiceUnavailableError("no worker", code="no_worker"), OverloadedError("full"),
                RateLimitError("upstream 429"), UpstreamError("502"), UpstreamTimeoutError("504")):
        assert falls_through(exc, chosen_by_server=False)
    assert not falls_through(ServiceUnavailableError("bye", code="shutting_down"), chosen_by_server=True)
    assert not falls_through(ModelNotFoundError("x"), chosen_by_server=True)


def test_a_refusal_moves_on_only_from_a_model_the_server_picked() -> None:
    for exc in (InvalidRequestError("no logit_bias here", param="logit_bias"), ContextLengthError("too long")):
        assert not falls_through(exc, chosen_by_server=False)
        assert falls_through(exc, chosen_by_server=True)


def test_the_client_hears_the_first_failure_to_serve_else_the_first_refusal() -> None:
    refusal, full, down = InvalidRequestError("no tools"), OverloadedError("full"), UpstreamError("down")
    assert reported([refusal, full, down]) is full
    assert reported([refusal, InvalidRequestError("other")]) is refusal


def test_traits_estimate_the_prompt_and_see_tools_that_may_be_called() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = "x" * 400
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": text}]})
    traits = traits_of(chat, {"messages": [m.for_template() for m in chat.messages]})
    assert (traits.prompt_tokens, traits.tools) == (101, False)  # 400 characters of text, 4 of the role
    with_tools = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools})
    traits = traits_of(with_tools, {"messages": [m.for_template() for m in with_tools.messages]})
    assert traits.tools and traits.prompt_tokens > 10  # the tool definitions are part of the prompt
    declined = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": "none"})
    assert not traits_of(declined, {"messages": []}).tools
    legacy = CompletionRequest.model_validate({"model": "m", "prompt": "y" * 40})
    assert traits_of(legacy, {"prompt": legacy.prompt_text()}) == traits_of(legacy, {"prompt": "y" * 40})
    assert traits_of(legacy, {"prompt": "y" * 40}).prompt_tokens == 10
