"""JSON schemas as GBNF (`server/engine/json_grammar.py`) on the real SmolLM2: a string holds only what JSON
allows unescaped, so whatever the model writes under the grammar is read back by a JSON parser."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from server.engine.batch_engine import BatchEngine
from server.engine.json_grammar import STRING_CHAR, schema_to_gbnf
from server.queue.messages import SamplingParams
from tests.engine_helpers import smollm2_engine

POEM = {"type": "object", "properties": {"poem": {"type": "string"}}, "required": ["poem"]}


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    eng = smollm2_engine(parallel=8)
    yield eng
    eng.close()


def test_string_characters_are_json_s() -> None:
    grammar = schema_to_gbnf(json.dumps({"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": "string", "pattern": "^x.*$"}}}))
    rules = dict(line.split(" ::= ", 1) for line in grammar.split("\n") if " ::= " in line)
    assert rules["char"].startswith(STRING_CHAR + " | ")
    assert rules["dot"] == STRING_CHAR


def test_what_the_model_writes_under_a_schema_parses(engine: BatchEngine) -> None:
    """A poem (lines, so a model reaches for raw line breaks) in a JSON string, sampled hot: every answer
    is JSON with a string in it. With the converter's own string rule, raw line breaks came through."""
    grammar = schema_to_gbnf(json.dumps(POEM))
    prompt = engine.chat_tokens([{"role": "user", "content": "Write a poem of four short lines about the sea, "
                                  "as JSON with the key poem."}])
    texts: dict[str, str] = {}
    for seed in range(8):
        engine.add(f"s{seed}", prompt, SamplingParams(temperature=1.3, seed=seed, max_tokens=120, grammar=grammar))
    while engine.active():
        for out in engine.step():
            texts[out.request_id] = texts.get(out.request_id, "") + out.text
    finished = [text for text in texts.values() if text.rstrip().endswith("}")]
    assert finished  # at least some answers closed their object within the limit
    for text in finished:
        assert isinstance(json.loads(text)["poem"], str)
