"""The server the Messages API tests share: `slm-server serve` with SmolLM2 (`tiny`, at most one request
queued or running), a hosted entry on the fake upstream, one on a closed port and one there that
falls back to the first, a router escalating images to the hosted one, API keys on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from server.embedded_redis import free_port
from tests.backends.fake_upstream import FakeUpstream
from tests.conftest import SMOLLM2, LiveServer, start_server, stop_server

KEY = "sk-ant-messages-test-key-0001"
REGISTRY = f"""
models:
  tiny:
    gguf: {SMOLLM2}
    n_ctx: 2048
    n_threads: 2
    parallel: 2
    max_queue: 1
  big-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: {{api_base}}
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 20
  dead-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: http://127.0.0.1:{{dead_port}}/v1
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 5
    retries: 0
  flaky-hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: http://127.0.0.1:{{dead_port}}/v1
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 5
    retries: 0
    fallbacks: [big-hosted]
  smart:
    backend: router
    targets: [tiny]
    escalate:
      - images: true
        to: big-hosted
"""
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS: list[Any] = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER}]
ASK: list[Any] = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[LiveServer]:
    registry = REGISTRY.format(api_base=fake.api_base, dead_port=free_port())
    live = start_server(tmp_path_factory.mktemp("messages"), registry, env={
        "SLM_API_KEYS": KEY, "SLM_MAX_BODY_BYTES": "65536", "HOSTED_TEST_API_KEY": "sk-upstream-key",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        yield live
    finally:
        stop_server(live)


@pytest.fixture
def client(server: LiveServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)
