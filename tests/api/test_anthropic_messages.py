"""`/v1/messages` through the official `anthropic` client against a real `serve` (`conftest`): SmolLM2
on a real worker, hosted entries through litellm on the fake upstream, API keys on."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.api.conftest import ASK, KEY, TOOLS, WEATHER
from tests.backends.fake_upstream import FakeUpstream, Reply
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

COLD = {"temperature": 0}  # (the client has no `temperature` argument: it goes in the body as it is)


def texts(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_plain_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="tiny", max_tokens=24, messages=ASK)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "tiny"
    assert [block.type for block in message.content] == ["text"] and texts(message).strip()
    assert message.stop_reason in ("end_turn", "max_tokens") and message.stop_sequence is None
    assert message.usage.input_tokens > 5 and 0 < message.usage.output_tokens <= 24


def test_system_prompt_is_read_and_counted_by_the_models_tokenizer(client: anthropic.Anthropic) -> None:
    system = ("You are a pirate on a ship in the Caribbean. Answer every question in the voice of an old pirate, "
              "with pirate words, and mention your parrot, your ship and the treasure in each answer.")
    plain = client.messages.create(model="tiny", max_tokens=4, messages=ASK, extra_body=COLD)
    briefed = client.messages.create(model="tiny", max_tokens=4, messages=ASK, extra_body=COLD, system=system)
    blocks: Any = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    as_blocks = client.messages.create(model="tiny", max_tokens=4, messages=ASK, extra_body=COLD, system=blocks)
    assert briefed.usage.input_tokens > plain.usage.input_tokens + 20  # (SmolLM2's template has a default one)
    assert as_blocks.usage.input_tokens == briefed.usage.input_tokens
    counted = client.messages.count_tokens(model="tiny", messages=ASK, system=system)
    assert counted.input_tokens == briefed.usage.input_tokens  # the worker's own template and tokenizer


def test_stream_ends_as_the_whole_message_at_temperature_0(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model="tiny", max_tokens=16, messages=ASK, extra_body=COLD)
    kinds: list[str] = []
    with client.messages.stream(model="tiny", max_tokens=16, messages=ASK, extra_body=COLD) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert [(b.type, texts(final)) for b in final.content] == [(b.type, texts(whole)) for b in whole.content]
    assert texts(final)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop", "message_delta"} <= set(kinds)


def test_ping_follows_message_start(server: LiveServer) -> None:
    body = {"model": "tiny", "max_tokens": 4, "messages": ASK, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60,
                      headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        names = [line.split(": ", 1)[1] for line in response.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"] and names[-1] == "message_stop"


def test_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model="tiny", max_tokens=16, messages=ASK, extra_body=COLD)
    words = texts(whole).split()
    assert len(words) > 4, texts(whole)
    stop = " " + words[3]
    for streamed in (False, True):
        if streamed:
            with client.messages.stream(model="tiny", max_tokens=16, messages=ASK, extra_body=COLD,
                                        stop_sequences=["@@never@@", stop]) as stream:
                cut = stream.get_final_message()
        else:
            cut = client.messages.create(model="tiny", max_tokens=16, messages=ASK, extra_body=COLD,
                                         stop_sequences=["@@never@@", stop])
        assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
        assert texts(whole).startswith(texts(cut)) and stop not in texts(cut)


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="tiny", max_tokens=3, messages=ASK)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_tool_loop_on_a_local_model(client: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    called = client.messages.create(model="tiny", max_tokens=120, messages=ask, tools=TOOLS,
                                    tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert called.stop_reason == "tool_use"
    uses = [block for block in called.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER)
    result = {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 31 degrees"}
    follow = [*ask, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in called.content]},
              {"role": "user", "content": [result]}]
    answer = client.messages.create(model="tiny", max_tokens=40, messages=follow, tools=TOOLS,
                                    tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens") and texts(answer).strip()
    assert all(block.type == "text" for block in answer.content)
    longer = client.messages.count_tokens(model="tiny", messages=follow, tools=TOOLS)
    shorter = client.messages.count_tokens(model="tiny", messages=ask, tools=TOOLS)
    assert longer.input_tokens > shorter.input_tokens


def test_named_tool_streamed(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="tiny", max_tokens=120, tools=TOOLS,
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "Weather in Rome?"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    uses = [block for block in final.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and final.stop_reason == "tool_use"
    jsonschema.validate(uses[0].input, WEATHER)
    assert "input_json" in kinds  # the client's event for an input_json_delta


def test_structured_output_on_a_local_model(client: anthropic.Anthropic) -> None:
    """`output_config.format` is enforced by the local model's grammar: the text is JSON of that schema."""
    message = client.messages.create(model="tiny", max_tokens=80, messages=[
        {"role": "user", "content": "Give me the weather in Paris as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    jsonschema.validate(json.loads(texts(message)), WEATHER)


def test_image_refused_by_a_local_model(client: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="tiny", max_tokens=8, messages=[
            {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'tiny'" in caught.value.message and "image" in caught.value.message


def test_hosted_through_litellm(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.script(Reply.ok("Bonjour from upstream", reasoning="the user wants French"))
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    message = client.messages.create(
        model="big-hosted", max_tokens=50, system="Be brief.",
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 7},
        stop_sequences=["END"], metadata={"user_id": "user-42"},
        messages=[{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}},
                                               image]}])
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "the user wants French"  # type: ignore[union-attr]
    assert texts(message) == "Bonjour from upstream" and message.stop_reason == "end_turn"
    assert message.model == "big-hosted" and message.usage.cache_read_input_tokens == message.usage.input_tokens // 2
    sent = fake.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {
            "type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["top_k"], sent["stop"], sent["user"]) == (
        50, 0.5, 0.9, 7, ["END"], "user-42")


def test_hosted_thinking_streamed(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    fake.script(Reply.ok("The answer is 4", reasoning="two plus two"))
    with client.messages.stream(model="big-hosted", max_tokens=4096, messages=[{"role": "user", "content": "2+2?"}],
                                thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert fake.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert "thinking" in kinds and "text" in kinds  # the client's events for thinking_delta and text_delta
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "two plus two" and texts(final) == "The answer is 4"  # type: ignore[union-attr]
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0  # from message_delta: known at the end


def test_hosted_tool_use_whole_and_streamed(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    for streamed in (False, True):
        fake.script(Reply.calls(("get_weather", '{"city": "Oslo", "unit": "celsius"}')))
        if streamed:
            with client.messages.stream(model="big-hosted", max_tokens=50, messages=ask, tools=TOOLS,
                                        tool_choice={"type": "any", "disable_parallel_tool_use": True}) as stream:
                message = stream.get_final_message()
        else:
            message = client.messages.create(model="big-hosted", max_tokens=50, messages=ask, tools=TOOLS,
                                             tool_choice={"type": "tool", "name": "get_weather"})
        uses = [block for block in message.content if block.type == "tool_use"]
        assert message.stop_reason == "tool_use" and len(uses) == 1
        assert uses[0].id == "call_fake_0" and uses[0].input == {"city": "Oslo", "unit": "celsius"}
        sent = fake.requests[-1].body
        assert sent["tools"] == [{"type": "function", "function": {"name": "get_weather",
                                                                   "description": "The weather in a city",
                                                                   "parameters": WEATHER}}]
        if streamed:
            assert sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
        else:
            assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    fake.script(Reply.ok("It is cold"))
    history = [*ask, {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {
        "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3 C",
                                      "is_error": False}, {"type": "text", "text": "And so?"}]}]
    client.messages.create(model="big-hosted", max_tokens=50, messages=history, tools=TOOLS)
    assert fake.requests[-1].body["messages"][1:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "celsius"})}}]},
        {"role": "tool", "content": "-3 C", "tool_call_id": "toolu_1"},
        {"role": "user", "content": [{"type": "text", "text": "And so?"}]}]


def test_count_tokens_hosted(client: anthropic.Anthropic) -> None:
    few = client.messages.count_tokens(model="big-hosted", messages=[{"role": "user", "content": "hi"}])
    more = client.messages.count_tokens(model="big-hosted", messages=ASK, system="A long system prompt " * 20)
    assert 0 < few.input_tokens < more.input_tokens


def test_bearer_auth_also_accepted(server: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key=None, auth_token=KEY, max_retries=0)
    assert client.messages.count_tokens(model="tiny", messages=ASK).input_tokens > 0


def test_routers_and_fallbacks_serve_messages(client: anthropic.Anthropic, fake: FakeUpstream) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    fake.script(Reply.describe())
    raw = client.messages.with_raw_response.create(model="smart", max_tokens=8, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    message = raw.parse()
    assert (raw.headers["x-slm-router"], raw.headers["x-slm-route"], message.model) == ("smart", "escalated",
                                                                                         "big-hosted")
    assert texts(message) == "I see 1 image(s): https://example.com/cat.png"
    plain = client.messages.with_raw_response.create(model="smart", max_tokens=4, messages=ASK)
    assert plain.headers["x-slm-model"] == "tiny" and plain.parse().model == "tiny"
    fallen = client.messages.with_raw_response.create(model="flaky-hosted", max_tokens=8, messages=ASK)
    assert fallen.headers["x-slm-fallback-from"] == "flaky-hosted" and fallen.parse().model == "big-hosted"
