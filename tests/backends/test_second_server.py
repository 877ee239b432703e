"""A hosted entry pointed at a second, real slm-server (the session's live server): our gateway
reaches it through litellm's OpenAI provider, whole and streamed, chat and legacy completions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.registry import parse_registry
from server.settings import Settings
from tests.conftest import LiveServer
from tests.gateway_thread import running_gateway
from tests.openapi import assert_valid

pytestmark = pytest.mark.integration

KEY_ENV = "SECOND_SERVER_TEST_KEY"  # the live server asks for no key; litellm's OpenAI provider sends one anyway
HELLO = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def gateway(live_server: LiveServer, redis_url: str) -> Iterator[str]:
    registry = parse_registry({"models": {"remote": {
        "backend": "hosted", "litellm_model": "openai/smollm2", "api_base": live_server.url + "/v1",
        "api_key_env": KEY_ENV, "timeout": 60, "retries": 0}}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-second-server")
        with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), registry) as url:
            yield url


def served_upstream(live_server: LiveServer, endpoint: str, stream: bool) -> float:
    """Requests the live server itself answered for smollm2 (proof the call went through it)."""
    wanted = {"model": "smollm2", "backend": "local", "endpoint": endpoint, "stream": str(stream).lower(),
              "code": "200"}
    text = httpx.get(live_server.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "slm_requests_total" and sample.labels == wanted)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_through_litellm_to_a_second_slm_server(gateway: str, live_server: LiveServer, stream: bool) -> None:
    before = served_upstream(live_server, "chat", True)  # litellm always streams from the provider
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0)
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model="remote", messages=HELLO, max_tokens=12, temperature=0, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True}) as response:
            assert (response.headers["x-slm-model"], response.headers["x-slm-backend"]) == ("remote", "hosted")
            chunks = list(response.parse())
        for chunk in chunks:
            assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
            assert chunk.model == "remote"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes in (["stop"], ["length"])
        usage = chunks[-1].usage
    else:
        raw = client.chat.completions.with_raw_response.create(model="remote", messages=HELLO, max_tokens=12,
                                                                temperature=0)  # type: ignore[arg-type]
        assert (raw.headers["x-slm-model"], raw.headers["x-slm-backend"]) == ("remote", "hosted")
        assert_valid("CreateChatCompletionResponse", raw.http_response.json())
        reply = raw.parse()
        assert reply.model == "remote" and reply.choices[0].finish_reason in ("stop", "length")
        text = reply.choices[0].message.content or ""
        usage = reply.usage
    assert text.strip()
    assert usage is not None and 0 < usage.completion_tokens <= 12 and usage.prompt_tokens > 0
    assert served_upstream(live_server, "chat", True) == before + 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_legacy_completion_through_litellm_to_a_second_slm_server(gateway: str, live_server: LiveServer,
                                                                  stream: bool) -> None:
    before = served_upstream(live_server, "completions", True)
    body = {"model": "remote", "prompt": "The sky is", "max_tokens": 8, "temperature": 0, "stream": stream}
    with httpx.stream("POST", gateway + "/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["x-slm-model"] == "remote"
        if stream:
            frames = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        else:
            response.read()
    if stream:
        assert frames[-1] == "[DONE]"
        chunks = [json.loads(f) for f in frames[:-1]]
        assert {(c["object"], c["model"]) for c in chunks} == {("text_completion", "remote")}
        finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finishes) == 1
        assert_valid("CreateCompletionResponse", finishes[0])  # the spec has no chunk schema for legacy completions
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    else:
        data = response.json()
        assert_valid("CreateCompletionResponse", data)
        assert data["model"] == "remote"
        text = data["choices"][0]["text"]
    assert text.strip()
    assert served_upstream(live_server, "completions", True) == before + 1
