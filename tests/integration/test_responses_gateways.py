"""Stored responses shared by gateways on one Redis: a conversation continued on a second gateway,
and again after the first gateway was restarted (the state lives in Redis, not in a process)."""

from __future__ import annotations

import signal

import openai
import pytest

from tests.conftest import wait_until
from tests.integration.test_distributed import Cluster, cluster, ready

pytestmark = pytest.mark.integration
__all__ = ["cluster"]  # the fixture, imported for this module's tests


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_three_turns_across_gateways_and_a_restart(cluster: Cluster) -> None:
    cluster.spawn("worker", "--model", "tiny")
    a, first_gateway = cluster.gateway()
    b, _ = cluster.gateway()
    wait_until(lambda: ready(a, 1) and ready(b, 1), timeout_s=60, what="the worker")

    one = client(a).responses.create(model="tiny", instructions="Answer in a few words.",
                                     input="My name is Ada. Name a colour.", max_output_tokens=8, temperature=0)
    two = client(b).responses.create(model="tiny", previous_response_id=one.id, input="Name a fruit.",
                                     max_output_tokens=8, temperature=0)
    assert two.previous_response_id == one.id
    assert two.usage is not None and one.usage is not None and two.usage.input_tokens > one.usage.input_tokens

    first_gateway.send_signal(signal.SIGTERM)
    assert first_gateway.wait(timeout=60) == 0
    a2, _ = cluster.gateway()
    wait_until(lambda: ready(a2, 1), timeout_s=60, what="the restarted gateway")
    three = client(a2).responses.create(model="tiny", previous_response_id=two.id, input="What is my name?",
                                        max_output_tokens=8, temperature=0)
    assert three.usage is not None and three.usage.input_tokens > two.usage.input_tokens
    items = client(a2).responses.input_items.list(three.id, order="asc")
    texts = [part.text for item in items.data if item.type == "message" for part in item.content
             if part.type in ("input_text", "output_text")]
    assert texts[0] == "My name is Ada. Name a colour." and texts[2] == "Name a fruit."
    assert texts[-1] == "What is my name?" and len(texts) == 5  # three inputs, two answers
    assert client(b).responses.retrieve(three.id).output_text == three.output_text


def test_at_the_cap_new_responses_are_refused_not_evicted(cluster: Cluster) -> None:
    cluster.env["SLM_RESPONSES_MAX_BYTES"] = "8000"
    cluster.spawn("worker", "--model", "tiny")
    a, _ = cluster.gateway()
    wait_until(lambda: ready(a, 1), timeout_s=60, what="the worker")
    kept = []
    with pytest.raises(openai.InternalServerError) as caught:
        for _ in range(10):
            kept.append(client(a).responses.create(model="tiny", input="Hi.", max_output_tokens=4).id)
    assert caught.value.status_code == 507 and caught.value.code == "storage_full"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert kept and all(client(a).responses.retrieve(rid).id == rid for rid in kept)  # none evicted
    unstored = client(a).responses.create(model="tiny", input="Hi.", max_output_tokens=4, store=False)
    assert unstored.store is False and unstored.output_text is not None
    client(a).responses.delete(kept[0])
    assert client(a).responses.create(model="tiny", input="Hi.", max_output_tokens=4).store is True
