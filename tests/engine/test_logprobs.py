"""A sampled token's logprob entry on the real SmolLM2 model: a distribution over the vocabulary, its greedy
token the most likely, the alternatives in order and their bytes the token's text."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

from server.engine.batch_engine import BatchEngine
from server.queue.messages import SamplingParams
from tests.engine_helpers import smollm2_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    eng = smollm2_engine(parallel=1)
    yield eng
    eng.close()


def entries(engine: BatchEngine, top: int) -> list[dict[str, Any]]:
    engine.add("r", engine.chat_tokens([{"role": "user", "content": "Name a colour."}]),
               SamplingParams(temperature=0, max_tokens=4, logprobs=True, top_logprobs=top))
    found: list[dict[str, Any]] = []
    while engine.active():
        for out in engine.step():
            found += out.logprobs or []
    return found


def test_greedy_tokens_are_the_most_likely_and_the_alternatives_come_in_order(engine: BatchEngine) -> None:
    found = entries(engine, top=5)
    assert found
    for entry in found:
        top = entry["top_logprobs"]
        assert len(top) == 5
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == pytest.approx(entry["logprob"])
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert all(t["logprob"] <= 0 for t in top)
        assert 0 < sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        assert bytes(entry["bytes"]).decode("utf-8", errors="replace") == entry["token"]


def test_no_alternatives_asked_none_given(engine: BatchEngine) -> None:
    found = entries(engine, top=0)
    assert found and all(entry["top_logprobs"] == [] for entry in found)
