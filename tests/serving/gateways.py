"""A second gateway, in this process, on the session's live server (its Redis and its workers).

The gateway's registry names the live server's local models (same names, so the same request
streams and workers) with its own admission and routing settings, plus hosted entries on a fake
upstream. Also: holding local slots busy, reading the gateway's metrics, and SSE parsing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.backends.health import HealthPolicy
from server.queue import keys
from server.registry import parse_registry
from server.settings import Settings
from tests.backends.fake_upstream import FakeUpstream
from tests.conftest import LiveServer, wait_until
from tests.gateway_thread import running_gateway

KEY_ENV = "ROUTING_TEST_UPSTREAM_KEY"  # not SLM_*: the autouse fixture clears those for every test
FAKE_TEXT = "Hello from the fake upstream"
# SmolLM2's end-of-text, <|im_start|> and <|im_end|> banned: an answer runs to max_tokens
NO_EOS = {"0": -100, "1": -100, "2": -100}
HOLD_TOKENS = 900  # a held answer's length (the live server's smollm2 has a 1024-token context)


@dataclass
class Gateway:
    url: str
    redis: redis.Redis
    upstream: FakeUpstream

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def depth(self, model: str) -> int:
        return int(self.redis.xlen(keys.request_stream(model)))

    def wait_idle(self, *models: str) -> None:
        """Every request of these models has left the queue and this gateway (held ones cancelled), and the
        gateway has seen the queue empty (its view, refreshed every 0.5 s, is what its router predicts from)."""
        for model in models:
            for what, check in (
                ("an empty queue", lambda m=model: self.depth(m) == 0),
                ("no request in flight at the gateway", lambda m=model: self.metric("slm_requests_in_flight",
                                                                                     model=m) == 0),
                ("the gateway seeing an empty queue", lambda m=model: self.metric("slm_queue_depth", model=m) == 0),
            ):
                wait_until(check, timeout_s=60, what=f"{what} for {model}", interval_s=0.1)


@contextmanager
def gateway_on(live_server: LiveServer, registry_yaml: str, upstream: FakeUpstream, *,
               upstream_health: HealthPolicy | None = None) -> Iterator[Gateway]:
    redis_url = live_server.redis_url()
    registry = parse_registry(yaml.safe_load(registry_yaml.format(api_base=upstream.api_base, key_env=KEY_ENV)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, "sk-routing-test-key")
        with running_gateway(Settings(redis_url=redis_url, reload_interval_s=0), registry,
                             upstream_health=upstream_health) as url:
            client = redis.Redis.from_url(redis_url)
            try:
                yield Gateway(url, client, upstream)
            finally:
                client.close()


@contextmanager
def held(gateway: Gateway, model: str, count: int) -> Iterator[None]:
    """`count` streams of `model` running (a worker started each) and generating long, until the block ends:
    then their clients leave, which cancels them."""
    body = {"model": model, "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": HOLD_TOKENS, "temperature": 0, "stream": True, "logit_bias": NO_EOS}
    with httpx.Client(timeout=120) as client, ExitStack() as stack:
        for _ in range(count):
            response = stack.enter_context(client.stream("POST", gateway.url + "/v1/chat/completions", json=body))
            assert response.status_code == 200, response.read()
            assert response.headers["x-slm-model"] == model
        yield


def sse_data(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def post(gateway: Gateway, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[httpx.Response, Any]:
    """The response and its JSON body (whole) or its decoded SSE chunks (streamed, `[DONE]` checked last)."""
    with httpx.stream("POST", gateway.url + path, json=body, timeout=120) as response:
        if not body.get("stream") or response.status_code != 200:
            response.read()
            return response, response.json()
        frames = sse_data(response)
    assert frames[-1] == "[DONE]"
    return response, [json.loads(frame) for frame in frames[:-1]]
