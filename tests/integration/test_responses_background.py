"""Background responses on two gateways sharing one Redis and one worker: created on one gateway,
polled on the other; cancelled while running (the worker frees its slot); a background stream cut by
the client and resumed after its last `sequence_number` on the other gateway."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.conftest import wait_until
from tests.integration.test_distributed import Cluster, cluster, ready
from tests.openapi import assert_valid, assert_valid_event

pytestmark = pytest.mark.integration
__all__ = ["cluster"]  # the fixture, imported for this module's tests

# a schema that makes any answer long (at least 300 strings): the run is still going when it is cancelled
LONG = {"format": {"type": "json_schema", "name": "words", "strict": True, "schema": {
    "type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}, "minItems": 300}},
    "required": ["words"], "additionalProperties": False}}}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def busy_slots(redis_url: str) -> int:
    r = redis.Redis.from_url(redis_url)
    return sum(int(r.hget(key, "busy") or 0) for key in r.scan_iter("slm:worker:*"))


@pytest.fixture
def two_gateways(cluster: Cluster) -> tuple[str, str]:
    cluster.spawn("worker", "--model", "tiny")
    a, _ = cluster.gateway()
    b, _ = cluster.gateway()
    wait_until(lambda: ready(a, 1) and ready(b, 1), timeout_s=60, what="the worker")
    return a, b


def test_created_on_one_gateway_completed_on_the_other(two_gateways: tuple[str, str]) -> None:
    a, b = two_gateways
    created = client(a).responses.create(model="tiny", input="Name a colour.", background=True,
                                         max_output_tokens=12, temperature=0)
    assert created.background is True and created.status in ("queued", "in_progress")
    seen: set[str] = set()

    def done() -> bool:
        status = client(b).responses.retrieve(created.id).status
        seen.add(str(status))
        return status in ("completed", "incomplete")

    wait_until(done, timeout_s=60, what="the background response to finish", interval_s=0.05)
    final = httpx.get(f"{b}/v1/responses/{created.id}", timeout=10).json()
    assert_valid("Response", final)
    assert final["output"][0]["content"][0]["text"] and final["usage"]["output_tokens"] > 0
    assert seen & {"completed", "incomplete"}


def test_cancelled_while_running_frees_the_slot(two_gateways: tuple[str, str], cluster: Cluster) -> None:
    a, b = two_gateways
    created = client(a).responses.create(model="tiny", input="List words.", background=True, text=LONG,
                                         max_output_tokens=900, temperature=0)

    def running() -> bool:
        status = client(b).responses.retrieve(created.id).status
        assert status in ("queued", "in_progress"), status
        return status == "in_progress" and busy_slots(cluster.redis.url) == 1

    wait_until(running, timeout_s=60, what="the response to run on the worker")
    cancelled = client(b).responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    wait_until(lambda: busy_slots(cluster.redis.url) == 0, timeout_s=10, what="the worker to free its slot")
    assert client(a).responses.retrieve(created.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as caught:  # a response not run in the background
        foreground = client(a).responses.create(model="tiny", input="Hi.", max_output_tokens=2)
        client(a).responses.cancel(foreground.id)
    assert caught.value.param == "response_id"


def events_of(lines: Any) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if line.startswith("data: "):
            event = json.loads(line[6:])
            assert_valid_event(event)
            out.append(event)
    return out


def test_a_cut_background_stream_is_resumed_on_the_other_gateway(two_gateways: tuple[str, str]) -> None:
    a, b = two_gateways
    body = {"model": "tiny", "input": "Tell a short story about a fox.", "background": True, "stream": True,
            "max_output_tokens": 60, "temperature": 0}
    first: list[dict[str, Any]] = []
    with httpx.stream("POST", a + "/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200
        for event in events_of(response.iter_lines()):
            first.append(event)
            if sum(e["type"] == "response.output_text.delta" for e in first) == 3:
                break  # the client's connection is cut here
    assert first[0]["type"] == "response.created" and first[0]["response"]["status"] == "queued"
    rid, last = first[0]["response"]["id"], first[-1]["sequence_number"]

    rest = [event.model_dump() for event in client(b).responses.retrieve(rid, stream=True, starting_after=last)]
    assert [e["sequence_number"] for e in first + rest] == list(range(len(first) + len(rest)))
    assert rest[-1]["type"] in ("response.completed", "response.incomplete")
    text = "".join(e["delta"] for e in first + rest if e["type"] == "response.output_text.delta")
    assert text == rest[-1]["response"]["output"][0]["content"][0]["text"]
    assert client(a).responses.retrieve(rid).output_text == text
