"""The batch engine on the real SmolLM2 model: batching changes nothing but speed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.batch_engine import (
    PREFILL_CHUNK_WHILE_DECODING,
    SHORT_ONLY_STEPS,
    SHORT_PROMPT_TOKENS,
    BatchEngine,
)
from server.errors import ContextLengthError
from server.queue.messages import SamplingParams
from tests.engine_helpers import run_all, smollm2_engine

GREEDY = SamplingParams(temperature=0, max_tokens=32)
PROMPTS = ["What is the capital of France?", "Count to five.", "Name a fruit.", "Say hello in Spanish.",
           "What is 2 + 2?", "Describe the sea.", "List three colours.", "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    eng = smollm2_engine(parallel=8)
    yield eng
    eng.close()


def test_greedy_text_is_the_same_alone_and_beside_seven_others(engine: BatchEngine) -> None:
    solo = {p: run_all(engine, {"x": (p, GREEDY)})["x"][0] for p in PROMPTS[:3]}
    batch = run_all(engine, {f"r{i}": (p, GREEDY) for i, p in enumerate(PROMPTS)})
    for i, prompt in enumerate(PROMPTS[:3]):
        assert batch[f"r{i}"][0] == solo[prompt]
    assert len({text for text, _ in batch.values()}) == len(PROMPTS), "sequences leaked into each other"


def test_max_tokens_and_usage(engine: BatchEngine) -> None:
    text, fin = run_all(engine, {"a": (PROMPTS[5], SamplingParams(temperature=0, max_tokens=5))})["a"]
    assert fin.reason == "length" and fin.completion_tokens == 5
    assert fin.prompt_ms > 0 and fin.generation_ms > 0 and text


def test_shared_prefix_reuses_the_kv_cache(engine: BatchEngine) -> None:
    run_all(engine, {"warm": ("Tell me about cats.", GREEDY)})
    _, fin = run_all(engine, {"again": ("Tell me about cats.", GREEDY)})["again"]
    assert fin.cached_tokens > 10
    assert fin.cached_tokens == fin.prompt_tokens - 1


def test_cancel_frees_the_slot_at_once(engine: BatchEngine) -> None:
    engine.add("c", engine.chat_tokens([{"role": "user", "content": "Write a long story."}]),
               SamplingParams(temperature=0, max_tokens=500))
    produced = 0
    while produced < 3:
        produced += sum(o.tokens for o in engine.step())
    engine.cancel("c")
    outs = engine.step()
    assert [o.finish.reason for o in outs if o.finish] == ["cancelled"]
    assert engine.free_slots() == engine.parallel


def test_prompt_longer_than_the_context_is_refused_before_taking_a_slot(engine: BatchEngine) -> None:
    tokens = engine.chat_tokens([{"role": "user", "content": "word " * 1200}])
    with pytest.raises(ContextLengthError):
        engine.add("long", tokens, GREEDY)
    with pytest.raises(ContextLengthError):
        engine.add("long", engine.chat_tokens([{"role": "user", "content": "hi"}]),
                   SamplingParams(max_tokens=5000))
    assert engine.free_slots() == engine.parallel


def test_seeded_sampling_repeats(engine: BatchEngine) -> None:
    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.9, seed=42, max_tokens=16)
    first = run_all(engine, {"s1": (PROMPTS[2], params)})["s1"][0]
    second = run_all(engine, {"s2": (PROMPTS[2], params)})["s2"][0]
    assert first == second


def test_a_short_prompt_is_not_queued_behind_a_long_one(engine: BatchEngine) -> None:
    """While a sequence decodes, prompts go in by chunks; the shortest left goes first, and a step that can
    finish a short prompt takes nothing of a long one: a short chat that arrives after a long document gets
    its first token in the next step, and the document then goes in by large chunks."""
    engine.add("running", engine.chat_tokens([{"role": "user", "content": "Write a long story."}]),
               SamplingParams(temperature=0, max_tokens=200))
    while not any(o.first_token for o in engine.step()):
        pass
    document = engine.chat_tokens([{"role": "user", "content": "Summarise: " + "the river runs east. " * 120}])
    assert 2 * SHORT_PROMPT_TOKENS < len(document) <= 2 * PREFILL_CHUNK_WHILE_DECODING
    engine.add("long", document, SamplingParams(temperature=0, max_tokens=4))
    engine.add("short", engine.chat_tokens([{"role": "user", "content": "Name a fruit."}]),
               SamplingParams(temperature=0, max_tokens=4))
    firsts: list[str] = []
    steps = 0
    while "short" not in firsts:
        firsts += [o.request_id for o in engine.step() if o.first_token]
        steps += 1
    assert steps == 1 and "long" not in firsts
    steps = 0
    while "long" not in firsts:
        firsts += [o.request_id for o in engine.step() if o.first_token]
        steps += 1
    assert steps <= 2  # by chunks of PREFILL_CHUNK_WHILE_DECODING
    for request_id in ("running", "long", "short"):
        engine.cancel(request_id)
    engine.step()
    assert engine.free_slots() == engine.parallel


def test_with_nothing_decoding_a_short_prompt_does_not_share_its_step_with_a_long_one(engine: BatchEngine) -> None:
    """A long document and a short chat wait with nothing decoding (a document being read in chunks, a chat
    arriving): the short one's first step is its own, not one with a chunk of the document in it."""
    document = engine.chat_tokens([{"role": "user", "content": "Summarise: " + "the road bends north. " * 120}])
    engine.add("long", document, SamplingParams(temperature=0, max_tokens=4))  # cached by no other test
    engine.add("short", engine.chat_tokens([{"role": "user", "content": "Name a tree."}]),
               SamplingParams(temperature=0, max_tokens=4))
    outputs = engine.step()
    assert [o.request_id for o in outputs if o.first_token] == ["short"]
    assert set(engine.last_batch) == {"short"}  # before: the short chat and 500-odd tokens of the document
    firsts: list[str] = []
    while "long" not in firsts:
        firsts += [o.request_id for o in engine.step() if o.first_token]
        assert "long" in engine.last_batch  # then the document goes on at once, beside the short one's tokens
    for request_id in engine.request_ids():
        engine.cancel(request_id)
    engine.step()
    assert engine.free_slots() == engine.parallel


def test_short_prompts_arriving_every_step_never_starve_a_long_one(engine: BatchEngine) -> None:
    engine.add("running", engine.chat_tokens([{"role": "user", "content": "Write a long story."}]),
               SamplingParams(temperature=0, max_tokens=300))
    while not any(o.first_token for o in engine.step()):
        pass
    document = engine.chat_tokens([{"role": "user", "content": "Summarise: " + "the hill rises west. " * 40}])
    engine.add("long", document, SamplingParams(temperature=0, max_tokens=2))
    long_first = None
    for step in range(20):
        engine.add(f"short{step}", engine.chat_tokens([{"role": "user", "content": f"Name a fruit ({step})."}]),
                   SamplingParams(temperature=0, max_tokens=1))
        if any(o.request_id == "long" and o.first_token for o in engine.step()):
            long_first = step
            break
    assert long_first is not None and long_first <= SHORT_ONLY_STEPS
    for request_id in engine.request_ids():
        engine.cancel(request_id)
    engine.step()
    assert engine.free_slots() == engine.parallel


@pytest.mark.parametrize("chunk", [96, PREFILL_CHUNK_WHILE_DECODING])
def test_prefill_chunk_bounds_what_a_prompt_takes_of_a_step_while_others_generate(engine: BatchEngine,
                                                                                   chunk: int) -> None:
    """The registry's `prefill_chunk`: a long prompt that arrives while a sequence generates goes in by
    chunks of that many tokens, one per step, and the generating sequence gets a token in every step."""
    engine.prefill_chunk = chunk
    try:
        engine.add("running", engine.chat_tokens([{"role": "user", "content": "Write a long story."}]),
                   SamplingParams(temperature=0, max_tokens=300))
        while not any(o.first_token for o in engine.step()):
            pass
        # a system message of its own: no other slot holds a prefix of it beyond the template's first tokens
        document = engine.chat_tokens([{"role": "system", "content": f"Chunks of {chunk}; be brief."},
                                       {"role": "user", "content": "Summarise: " + "the road bends north. " * 60}])
        assert 3 * 96 < len(document) <= PREFILL_CHUNK_WHILE_DECODING
        engine.add("long", document, SamplingParams(temperature=0, max_tokens=2))
        steps = running_tokens = 0
        long_first = False
        while not long_first:
            outs = engine.step()
            steps += 1
            running_tokens += sum(o.tokens for o in outs if o.request_id == "running")
            long_first = any(o.request_id == "long" and o.first_token for o in outs)
        reusable = 4  # `<|im_start|>system\n` may be reused from another slot
        assert -(-(len(document) - reusable) // chunk) <= steps <= -(-len(document) // chunk)
        assert running_tokens == steps
    finally:
        engine.prefill_chunk = PREFILL_CHUNK_WHILE_DECODING
        for request_id in engine.request_ids():
            engine.cancel(request_id)
        engine.step()
    assert engine.free_slots() == engine.parallel
