"""HostedGeneration against a real HTTP upstream through litellm: answers, timings, slots, retries."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.backends.base import Generation
from server.backends.hosted import HostedBackend, HostedBackends, HostedGeneration, HostedParams
from server.errors import OverloadedError, SlmError, UpstreamError
from server.protocol import ChatCompletionRequest, CompletionRequest
from tests.backends.conftest import CANARY_KEY, MakeBackend, until
from tests.backends.fake_upstream import FakeUpstream, Reply

MESSAGES = [{"role": "user", "content": "Say hello."}]


def chat(backend: HostedBackend, **params: Any) -> HostedGeneration:
    return backend.generation("chat", HostedParams(**params), messages=MESSAGES)


def either(backend: HostedBackend, endpoint: str) -> HostedGeneration:
    if endpoint == "chat":
        return chat(backend)
    return backend.generation("completions", HostedParams(), prompt="Once")


async def collect(gen: HostedGeneration) -> list[str]:
    """The texts of the answer's deltas (finishes and other fields left out)."""
    await gen.start()
    try:
        return [delta.text async for delta in gen.deltas() if delta.text]
    finally:
        await gen.close()


def sample_count(backend: HostedBackend, metric: str, **labels: str) -> float:
    value = backend.metrics.registry.get_sample_value(metric, labels)
    return value or 0.0


async def test_streamed_chat_yields_the_upstream_text_usage_and_timings(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    backend = make_backend()
    gen = chat(backend, max_tokens=32, temperature=0.2, top_p=0.9, stop=("END",), seed=7, presence_penalty=0.5,
               frequency_penalty=-0.5)
    pieces = await collect(gen)
    assert pieces == ["Hello", " from", " the", " fake", " upstream"]
    assert gen.result.finish_reason == "stop"
    assert gen.result.completion_tokens == 5
    assert gen.result.prompt_tokens > 0
    assert gen.result.prompt_ms > 0 and gen.result.predicted_ms >= 0
    assert gen.redelivered is None
    [seen] = fake.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {CANARY_KEY}"
    body = seen.body
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == MESSAGES
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty",
                                 "frequency_penalty")} == {
        "max_tokens": 32, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5}
    assert sample_count(backend, "slm_upstream_latency_seconds_count", model="big", provider="openai") == 1
    assert backend.in_flight == 0


async def test_whole_answer_is_assembled_and_keeps_the_upstream_finish_reason(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.ok("cut short by the limit", finish_reason="length"))
    gen = chat(make_backend(), max_tokens=5)
    assert "".join(await collect(gen)) == "cut short by the limit"
    assert gen.result.finish_reason == "length"
    assert gen.result.completion_tokens == 5
    assert "temperature" not in fake.requests[0].body  # only what the client set goes upstream


async def test_legacy_completion_goes_to_the_completions_endpoint_with_the_raw_prompt(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.ok("upon a time"))
    gen = make_backend().generation("completions", HostedParams(max_tokens=8), prompt="Once")
    assert "".join(await collect(gen)) == "upon a time"
    assert gen.result.finish_reason == "stop" and gen.result.completion_tokens == 3
    [seen] = fake.requests
    assert seen.path == "/v1/completions" and seen.body["prompt"] == "Once"


async def test_no_parameter_is_refused_by_the_gateway_for_a_hosted_model() -> None:
    """What the provider may take goes to litellm by name; what is beyond the spec, inside extra_body."""
    req = ChatCompletionRequest.model_validate({
        "model": "big", "messages": MESSAGES, "top_k": 40, "min_p": 0.0, "repeat_penalty": 1.3, "n": 2,
        "logit_bias": {"42": 5}, "logprobs": True, "top_logprobs": 2, "reasoning_effort": "low",
        "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "user": "u-1",
        "max_completion_tokens": 9, "mock_response": "steered", "metadata": {"k": "v"}})
    kwargs = HostedParams.from_request(req).kwargs()
    assert kwargs["extra_body"] == {"top_k": 40, "repeat_penalty": 1.3, "user": "u-1", "mock_response": "steered",
                                    "metadata": {"k": "v"}}
    assert {k: kwargs[k] for k in ("n", "logit_bias", "logprobs", "top_logprobs", "reasoning_effort", "tool_choice",
                                   "max_completion_tokens")} == {
        "n": 2, "logit_bias": {"42": 5}, "logprobs": True, "top_logprobs": 2, "reasoning_effort": "low",
        "tool_choice": "required", "max_completion_tokens": 9}
    assert kwargs["tools"] == [{"type": "function", "function": {"name": "f"}}]
    assert "mock_response" not in kwargs and "user" not in kwargs and "metadata" not in kwargs
    completion = CompletionRequest.model_validate({"model": "big", "prompt": "x", "logprobs": 1, "echo": True})
    assert HostedParams.from_request(completion).kwargs() == {"logprobs": 1, "echo": True}


async def test_response_format_and_tools_go_through(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    req = ChatCompletionRequest.model_validate({
        "model": "big", "messages": MESSAGES, "response_format": {"type": "json_object"}, "tool_choice": "none",
        "tools": [{"type": "function", "function": {"name": "f"}}]})
    fake.script(Reply.ok('{"a": 1}'))
    gen = make_backend().generation("chat", HostedParams.from_request(req), messages=MESSAGES)
    assert "".join(await collect(gen)) == '{"a": 1}'
    body = fake.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"] == [{"type": "function", "function": {"name": "f"}}] and body["tool_choice"] == "none"
    neutral = CompletionRequest.model_validate({"model": "big", "prompt": "x", "top_k": 0, "repeat_penalty": 1.0,
                                                "temperature": 0.0, "stop": "\n", "max_tokens": 16})
    params = HostedParams.from_request(neutral)
    assert params.kwargs() == {"max_tokens": 16, "temperature": 0.0, "stop": ["\n"]}


async def test_concurrency_is_bounded_per_model_and_slots_come_back(
        make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.default = Reply.hold("held answer")
    backend = make_backend(max_concurrency=2)
    tasks = [asyncio.create_task(collect(chat(backend))) for _ in range(5)]
    await until(lambda: fake.in_flight == 2 and backend.waiting == 3, what="2 upstream calls and 3 waiting")
    assert fake.max_in_flight == 2 and backend.in_flight == 2
    fake.release()
    answers = await asyncio.gather(*tasks)
    assert ["".join(a) for a in answers] == ["held answer"] * 5
    assert fake.max_in_flight == 2 and len(fake.requests) == 5
    assert backend.in_flight == 0 and backend.waiting == 0


async def test_no_free_slot_within_the_timeout_is_a_429(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.default = Reply.hold()
    backend = make_backend(max_concurrency=1, slot_timeout_s=0.05)
    first = asyncio.create_task(collect(chat(backend)))
    await until(lambda: fake.in_flight == 1, what="the first call to hold the only slot")
    with pytest.raises(OverloadedError) as info:
        await collect(chat(backend))
    assert info.value.status == 429 and info.value.code == "hosted_busy" and info.value.headers()["Retry-After"]
    fake.release()
    await first
    assert len(fake.requests) == 1 and backend.in_flight == 0


async def test_a_5xx_before_the_first_chunk_is_retried(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.script(Reply.error(503), Reply.ok("second time lucky"))
    backend = make_backend(retries=1)
    assert "".join(await collect(chat(backend))) == "second time lucky"
    assert len(fake.requests) == 2
    assert sample_count(backend, "slm_upstream_errors_total", model="big", provider="openai", code="503") == 1


async def test_retries_are_bounded(make_backend: MakeBackend, fake: FakeUpstream) -> None:
    fake.default = Reply.error(500)
    backend = make_backend(retries=2)
    with pytest.raises(UpstreamError):
        await collect(chat(backend))
    assert len(fake.requests) == 3
    assert sample_count(backend, "slm_upstream_errors_total", model="big", provider="openai", code="500") == 3
    assert backend.in_flight == 0


@pytest.mark.parametrize("reply", [Reply.error(400, "bad"), Reply.error(429, "slow down")], ids=["400", "429"])
async def test_client_errors_and_rate_limits_are_not_retried(
        make_backend: MakeBackend, fake: FakeUpstream, reply: Reply) -> None:
    fake.script(reply)
    with pytest.raises(SlmError) as info:
        await collect(chat(make_backend(retries=3)))
    assert info.value.status == reply.status
    assert len(fake.requests) == 1


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_stream_cut_after_the_first_chunk_is_an_error_and_never_retried(
        make_backend: MakeBackend, fake: FakeUpstream, endpoint: str) -> None:
    fake.script(Reply.drop_mid_stream("one two three four"))
    backend = make_backend(retries=3)
    gen = either(backend, endpoint)
    await gen.start()
    received: list[str] = []
    with pytest.raises(UpstreamError) as info:
        async for delta in gen.deltas():
            received.append(delta.text)
    await gen.close()
    assert received == ["one", " two"]
    assert info.value.status == 502 and info.value.code == "upstream_stream_broken"
    assert len(fake.requests) == 1
    assert backend.in_flight == 0


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_a_stream_that_just_ends_is_not_passed_off_as_complete(
        make_backend: MakeBackend, fake: FakeUpstream, endpoint: str) -> None:
    fake.script(Reply.truncate("one two three four"))
    backend = make_backend()
    gen = either(backend, endpoint)
    await gen.start()
    with pytest.raises(UpstreamError) as info:
        _ = [text async for text in gen.deltas()]
    await gen.close()
    assert info.value.code == "upstream_truncated" and info.value.status == 502
    assert sample_count(backend, "slm_upstream_errors_total", model="big", provider="openai", code="truncated") == 1


async def test_cancel_ends_the_stream_quietly_and_frees_the_slot(make_backend: MakeBackend) -> None:
    backend = make_backend()
    gen = chat(backend)
    await gen.start()
    received: list[str] = []
    async for delta in gen.deltas():
        received.append(delta.text)
        if len(received) == 2:
            await gen.cancel()
    await gen.close()
    await gen.close()  # idempotent
    assert received == ["Hello", " from"]
    assert backend.in_flight == 0


async def test_backends_are_one_per_entry_and_renewed_when_a_reload_changes_it(make_backend: MakeBackend) -> None:
    backend = make_backend()
    backends = HostedBackends(backend.metrics)
    first = backends.get("big", backend.entry)
    assert backends.get("big", backend.entry) is first
    edited = backend.entry.model_copy(update={"max_concurrency": 3})
    renewed = backends.get("big", edited)
    assert renewed is not first and renewed.entry.max_concurrency == 3
    assert backends.get("big", edited) is renewed


async def test_a_hosted_generation_is_a_generation(make_backend: MakeBackend) -> None:
    gen: Generation = chat(make_backend())  # the protocol the service streams from (checked by mypy)
    assert gen.redelivered is None
