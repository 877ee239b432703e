"""`/v1/responses` on a real server (SmolLM2 worker, Redis, a hosted entry on the fake upstream),
driven by the official `openai` client; bodies and stream events validated against the spec."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.backends.fake_upstream import Reply
from tests.openapi import assert_valid, assert_valid_event
from tests.prometheus_text import scrape, value
from tests.responses.conftest import KEY_A, KEY_B, ResponsesServer

pytestmark = pytest.mark.integration

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


def raw_events(server: ResponsesServer, body: dict[str, Any], key: str = KEY_A) -> list[dict[str, Any]]:
    """The SSE events of a streamed create, each validated; the frame's `event:` names its type."""
    events = []
    with httpx.stream("POST", server.url + "/v1/responses", json={**body, "stream": True}, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["type"] == name
                assert_valid_event(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_create_retrieve_list_items_delete(responses_server: ResponsesServer) -> None:
    client = responses_server.client()
    raw = client.responses.with_raw_response.create(model="tiny", input="Name a colour.", max_output_tokens=12,
                                                    temperature=0, metadata={"case": "one"})
    body = raw.http_response.json()
    assert_valid("Response", body)
    created = raw.parse()
    assert created.status in ("completed", "incomplete") and created.output_text
    assert created.metadata == {"case": "one"} and created.usage is not None and created.usage.output_tokens > 0

    again = client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    listed = httpx.get(f"{responses_server.url}/v1/responses/{created.id}/input_items", timeout=10,
                       headers={"Authorization": f"Bearer {KEY_A}"}).json()
    assert_valid("ResponseItemList", listed)

    assert client.responses.delete(created.id) is None  # the client returns nothing for a delete
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(created.id)
    assert caught.value.body["param"] == "response_id"  # type: ignore[index]


def test_streamed_events_and_the_stream_helper(responses_server: ResponsesServer) -> None:
    events = raw_events(responses_server, {"model": "tiny", "input": "Say hello.", "max_output_tokens": 64,
                                           "temperature": 0})
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == "response.completed"
    final = events[-1]["response"]
    assert_valid("Response", final)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text and final["output"][0]["content"][0]["text"] == text

    client = responses_server.client()
    deltas = []
    for event in client.responses.create(model="tiny", input="Say hello.", max_output_tokens=64, temperature=0,
                                         stream=True):
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
    assert "".join(deltas) == text  # the same greedy answer, streamed through the client

    # the helper wants `response.completed`: an answer that ends by itself (greedy, it does, well within 64)
    with client.responses.stream(model="tiny", input="Say hello.", max_output_tokens=64, temperature=0) as stream:
        seen = [event.type for event in stream]
        helper_final = stream.get_final_response()
    assert helper_final.output_text == text and seen[-1] == kinds[-1]
    assert client.responses.retrieve(helper_final.id).output_text == text  # a streamed response is stored too


def test_a_conversation_reuses_the_worker_prefix(responses_server: ResponsesServer) -> None:
    client = responses_server.client()
    first = client.responses.create(model="tiny", instructions="You are terse.", input="Name a fruit.",
                                    max_output_tokens=8, temperature=0)
    second = client.responses.create(model="tiny", previous_response_id=first.id, input="And a vegetable?",
                                     max_output_tokens=8, temperature=0)
    assert second.previous_response_id == first.id
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # turn one is in turn two's prompt
    assert second.usage.input_tokens_details.cached_tokens > 0  # ... and the worker still held it
    items = client.responses.input_items.list(second.id, order="asc")
    assert [(i.type, getattr(i, "role", None)) for i in items.data] == [
        ("message", "user"), ("message", "assistant"), ("message", "user")]
    page = client.responses.input_items.list(second.id, order="asc", limit=1, after=items.data[0].id)
    assert [i.id for i in page.data] == [items.data[1].id] and page.has_more


def test_a_function_tool_loop_on_a_local_model(responses_server: ResponsesServer) -> None:
    client = responses_server.client()
    asked = client.responses.create(model="tiny", input="What is the weather in Oslo?", tools=[WEATHER],
                                    tool_choice="required", parallel_tool_calls=False, temperature=0)
    calls = [item for item in asked.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    answered = client.responses.create(
        model="tiny", previous_response_id=asked.id, tools=[WEATHER], max_output_tokens=24, temperature=0,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Rain, 7 degrees."}])
    assert answered.output[0].type == "message" and answered.output_text
    items = client.responses.input_items.list(answered.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]

    events = raw_events(responses_server, {"model": "tiny", "input": "Weather in Bergen?", "tools": [WEATHER],
                                           "tool_choice": "required", "temperature": 0})
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done and json.loads(done[0]["arguments"])["city"]


def test_json_schema_output_validates(responses_server: ResponsesServer) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 20}},
              "required": ["colour"], "additionalProperties": False}
    response = responses_server.client().responses.create(
        model="tiny", input="Give a colour as JSON.", temperature=0, max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text is not None and response.text.format.type == "json_schema"


def test_truncation_auto_drops_the_oldest_turns(responses_server: ResponsesServer) -> None:
    client = responses_server.client()
    long_turn = "Remember these words: " + " ".join(["harbour lantern"] * 700)
    first = client.responses.create(model="tiny", input=long_turn, max_output_tokens=4, temperature=0)
    follow = {"model": "tiny", "previous_response_id": first.id, "input": long_turn + " Which words?",
              "max_output_tokens": 4, "temperature": 0}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**follow)
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "input"
    fitted = client.responses.create(**follow, truncation="auto")
    assert fitted.truncation == "auto" and fitted.usage is not None
    assert fitted.usage.input_tokens < 2048


def test_store_false_writes_nothing(responses_server: ResponsesServer) -> None:
    client = responses_server.client()
    response = client.responses.create(model="tiny", input="Hi.", max_output_tokens=4, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def bad(responses_server: ResponsesServer, body: dict[str, Any], key: str = KEY_A) -> dict[str, Any]:
    response = httpx.post(responses_server.url + "/v1/responses", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {key}"})
    assert 400 <= response.status_code < 500 and response.status_code != 422, response.text
    assert_valid("ErrorResponse", response.json())
    error: dict[str, Any] = response.json()["error"]
    error["status"] = response.status_code
    return error


def test_bad_input_is_a_4xx_naming_the_parameter(responses_server: ResponsesServer) -> None:
    base = {"model": "tiny", "input": "Hi.", "max_output_tokens": 4}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"input": [{"type": "message", "role": "user", "content": [{"type": "input_audio"}]}]},
         "input[0].content[0].type"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": "word " * 6000}, "input"),  # past the model's context
        ({"max_output_tokens": "64"}, "max_output_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),  # a local model has no reasoning effort
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"model": "nope"}, "model"),
        ({"background": True, "store": False}, "background"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object", "properties": {
            "a": {"type": "string", "minLength": 5000}}}}}}, "text.format.schema.properties.a.minLength"),
    ]
    for extra, param in cases:
        assert bad(responses_server, {**base, **extra})["param"] == param, extra
    big = httpx.post(responses_server.url + "/v1/responses", json={**base, "input": "x" * (5 << 20)}, timeout=60,
                     headers={"Authorization": f"Bearer {KEY_A}"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    headers = {"Authorization": f"Bearer {KEY_A}"}
    stored = responses_server.client().responses.create(**base)  # still serving
    assert stored.output_text is not None
    for method, path, param in (("GET", f"/v1/responses/{stored.id}?stream=true", "stream"),
                                ("GET", f"/v1/responses/{stored.id}/input_items?limit=0", "limit"),
                                ("GET", f"/v1/responses/{stored.id}/input_items?order=up", "order"),
                                ("GET", f"/v1/responses/{stored.id}/input_items?after=msg_x", "after"),
                                ("POST", f"/v1/responses/{stored.id}/cancel", "response_id"),
                                ("POST", "/v1/responses/resp_unknown/cancel", "response_id")):
        answer = httpx.request(method, responses_server.url + path, headers=headers, timeout=10)
        assert 400 <= answer.status_code < 500 and answer.status_code != 422, answer.text
        assert answer.json()["error"]["param"] == param, (path, answer.text)


def test_another_keys_response_is_not_found(responses_server: ResponsesServer) -> None:
    mine = responses_server.client(KEY_A).responses.create(model="tiny", input="Hi.", max_output_tokens=4)
    other = responses_server.client(KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    error = bad(responses_server, {"model": "tiny", "input": "Hi.", "previous_response_id": mine.id}, key=KEY_B)
    assert error["param"] == "previous_response_id" and error["code"] == "previous_response_not_found"
    assert responses_server.client(KEY_A).responses.retrieve(mine.id).id == mine.id


def test_hosted_whole_and_streamed(responses_server: ResponsesServer) -> None:
    upstream = responses_server.upstream
    client = responses_server.client()
    upstream.script(Reply.ok("Blue."))
    response = client.responses.create(model="hosted", input="Name a colour.", instructions="Be brief.",
                                       reasoning={"effort": "low"}, max_output_tokens=20)
    assert response.output_text == "Blue." and response.model == "hosted"
    seen = upstream.requests[-1].body
    assert seen["reasoning_effort"] == "low"
    assert 20 in (seen.get("max_tokens"), seen.get("max_completion_tokens"))
    assert seen["messages"][0] == {"role": "system", "content": "Be brief."}
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens > 0

    upstream.script(Reply.calls(("get_weather", '{"city": "Oslo"}')))
    events = raw_events(responses_server, {"model": "hosted", "input": "Weather in Oslo?", "tools": [WEATHER]})
    final = events[-1]["response"]
    assert final["output"][0]["type"] == "function_call"
    assert json.loads(final["output"][0]["arguments"]) == {"city": "Oslo"}
    assert upstream.requests[-1].body["tools"][0]["function"]["name"] == "get_weather"


def test_hosted_reasoning_and_refusal(responses_server: ResponsesServer) -> None:
    upstream = responses_server.upstream
    upstream.script(Reply.ok("Sure.", reasoning="Thinking it over."), Reply.ok("", refusal="I cannot."))
    events = raw_events(responses_server, {"model": "hosted", "input": "Think, then answer."})
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["content"][0]["text"] == "".join(
        e["delta"] for e in events if e["type"] == "response.reasoning_text.delta") == "Thinking it over."
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    refused = responses_server.client().responses.create(model="hosted", previous_response_id=final["id"],
                                                         input="Now something else.")
    assert refused.output[0].type == "message" and refused.output[0].content[0].type == "refusal"
    assert upstream.requests[-1].body["messages"][-2] == {"role": "assistant", "content": "Sure."}


def test_metrics_count_the_responses_endpoint(responses_server: ResponsesServer) -> None:
    labels = {"model": "tiny", "backend": "local", "endpoint": "responses", "stream": "false", "code": "200"}
    before = value(scrape(responses_server.url), "slm_requests_total", **labels)
    responses_server.client().responses.create(model="tiny", input="Hi.", max_output_tokens=2)
    assert value(scrape(responses_server.url), "slm_requests_total", **labels) == before + 1
