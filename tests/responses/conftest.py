"""A real `slm-server serve` for the Responses API: SmolLM2 as `tiny`, a hosted entry on the fake
upstream, and two API keys (stored responses are scoped to the key that created them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from tests.backends.fake_upstream import FakeUpstream
from tests.conftest import LiveServer, start_server, stop_server, tiny_registry

KEY_A = "sk-responses-key-a"
KEY_B = "sk-responses-key-b"

HOSTED = """
  hosted:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: {api_base}
    api_key_env: HOSTED_TEST_API_KEY
    timeout: 20
"""


@dataclass
class ResponsesServer:
    server: LiveServer
    upstream: FakeUpstream

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str = KEY_A) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def responses_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResponsesServer]:
    with FakeUpstream() as upstream:
        registry = tiny_registry(n_ctx=2048, n_threads=2, parallel=2) + HOSTED.format(api_base=upstream.api_base)
        server = start_server(tmp_path_factory.mktemp("responses"), registry, env={
            "HOSTED_TEST_API_KEY": "sk-upstream", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "SLM_API_KEYS": f"{KEY_A},{KEY_B}"})
        try:
            yield ResponsesServer(server, upstream)
        finally:
            stop_server(server)
