"""The OpenAI Agents SDK (`openai-agents`) with this server as its OpenAI endpoint and the
Responses model class: an agent with one function tool runs to completion, on a local model and on
a hosted entry (its provider the fake upstream)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool

from tests.backends.fake_upstream import Reply
from tests.responses.conftest import KEY_A, ResponsesServer

pytestmark = pytest.mark.integration


def run_agent(server: ResponsesServer, model: str, calls: list[str], *, stop_on_tool: bool = False
              ) -> tuple[str, list[str]]:
    """(final output, item types of the run) of an agent whose one tool records the cities it was asked;
    `stop_on_tool`: the tool's output is the final output (the SDK's `stop_on_first_tool`)."""

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Rain in {city}, 7 degrees."

    async def main() -> tuple[str, list[str]]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY_A, max_retries=0, timeout=120)
        agent = Agent(name="weather", instructions="Use get_weather, then answer in one sentence.",
                      tools=[get_weather], model=OpenAIResponsesModel(model=model, openai_client=client),
                      model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=256,
                                                   parallel_tool_calls=False),
                      tool_use_behavior="stop_on_first_tool" if stop_on_tool else "run_llm_again")
        try:
            result = await Runner.run(agent, "What is the weather in Oslo?", max_turns=4,
                                      run_config=RunConfig(tracing_disabled=True))
        finally:
            await client.close()
        return str(result.final_output), [item.type for item in result.new_items]

    return asyncio.run(main())


def test_an_agent_with_a_tool_on_a_local_model(responses_server: ResponsesServer) -> None:
    """SmolLM2-135M, once its tool choice is reset to `auto`, calls the tool again rather than answer
    (its answer from a function_call_output is proven in `test_openai_client`): here the run stops with
    the tool's output."""
    calls: list[str] = []
    output, kinds = run_agent(responses_server, "tiny", calls, stop_on_tool=True)
    assert len(calls) == 1 and calls[0]
    assert kinds == ["tool_call_item", "tool_call_output_item"]
    assert output == f"Rain in {calls[0]}, 7 degrees."


def test_an_agent_with_a_tool_on_a_hosted_entry(responses_server: ResponsesServer) -> None:
    upstream = responses_server.upstream
    upstream.script(Reply.calls(("get_weather", '{"city": "Oslo"}')), Reply.ok("It rains in Oslo."))
    calls: list[str] = []
    output, kinds = run_agent(responses_server, "hosted", calls)
    assert calls == ["Oslo"] and output == "It rains in Oslo."
    assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
    second = upstream.requests[-1].body["messages"]  # the tool's output went back to the provider
    assert second[-1]["role"] == "tool" and "Rain in Oslo" in second[-1]["content"]
    assert json.loads(second[-2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
