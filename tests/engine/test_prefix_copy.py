"""A prefix held by a busy or cancelled sequence serves a new one on the real SmolLM2 model: copied into a
free slot (busy) or found in the freed slot (cancelled), never evaluated again; the text is unchanged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.batch_engine import BatchEngine, Finish
from server.queue.messages import SamplingParams
from tests.engine_helpers import smollm2_engine

GREEDY = SamplingParams(temperature=0, max_tokens=24)
LONG = SamplingParams(temperature=0, max_tokens=400)
DOC = " ".join(f"Section {i}: the river town of Alder keeps {i * 3} boats, a mill and a market on day {i}."
               for i in range(20))


def chat(question: str, *history: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "system", "content": DOC}, *history, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    eng = smollm2_engine(parallel=4)
    yield eng
    eng.close()


def run_one(engine: BatchEngine, rid: str, messages: list[dict[str, str]]) -> tuple[str, Finish]:
    engine.add(rid, engine.chat_tokens(messages), GREEDY)
    text = ""
    while True:
        for out in engine.step():
            if out.request_id == rid:
                text += out.text
                if out.finish is not None:
                    return text, out.finish


def start_generating(engine: BatchEngine, rid: str, messages: list[dict[str, str]]) -> None:
    engine.add(rid, engine.chat_tokens(messages), LONG)
    produced = 0
    while produced < 3:
        produced += sum(o.tokens for o in engine.step() if o.request_id == rid)


def test_a_busy_sequences_prefix_is_copied_into_a_free_slot(engine: BatchEngine) -> None:
    follow_up = chat("How many boats are there in section 4?")
    reference, _ = run_one(engine, "ref", follow_up)
    doc_tokens = len(engine.chat_tokens([{"role": "system", "content": DOC}]))
    assert doc_tokens > 300
    # the slot holding the document is now busy with another question on it
    start_generating(engine, "busy", chat("Describe the market."))
    copies = engine.copies
    text, fin = run_one(engine, "copied", follow_up)
    assert engine.copies == copies + 1
    assert fin.cached_tokens >= doc_tokens - 8, (fin.cached_tokens, doc_tokens)
    assert text == reference, "the copied cache changed the greedy text"
    engine.cancel("busy")
    while engine.active():
        engine.step()


def test_a_follow_up_right_after_a_hang_up_reuses_the_cancelled_prefix(engine: BatchEngine) -> None:
    first = chat("List every section's boats.")
    start_generating(engine, "hung-up", first)
    engine.cancel("hung-up")  # the client left after its first tokens
    fin_out = [o.finish for o in engine.step() if o.finish is not None]
    assert [f.reason for f in fin_out] == ["cancelled"]
    prompt = len(engine.chat_tokens(first))
    _, fin = run_one(engine, "next", chat("And the mills?", {"role": "user", "content": "List every section's boats."},
                                          {"role": "assistant", "content": "Section 0"}))
    assert fin.cached_tokens >= prompt - 8, (fin.cached_tokens, prompt)


def test_the_busy_slot_is_not_copied_for_a_short_common_prefix(engine: BatchEngine) -> None:
    """The two prompts share the template's opening and no more, as every free slot does."""
    start_generating(engine, "long", [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Write a poem about rivers."}])
    copies = engine.copies
    _, fin = run_one(engine, "other", [{"role": "system", "content": "Answer in French."},
                                       {"role": "user", "content": "Write a list of fruits."}])
    assert engine.copies == copies
    assert fin.cached_tokens < 64
    engine.cancel("long")
    while engine.active():
        engine.step()


def test_a_kept_document_in_the_way_of_the_layout_moves_to_another_slot_and_still_serves_its_follow_up() -> None:
    """Four slots: the document's conversation left its prefix in slot 0, short chats in 1 and 2, and slot 1
    is busy again. A new conversation takes slot 0 (beside the busy one; 3 would split the batch into two
    runs), so the document moves to slot 3 first; the document's follow-up then has its prefix copied back
    beside the busy slot, and its greedy text is what it was, evaluated from scratch."""
    engine = smollm2_engine(parallel=4)
    try:
        follow_up = chat("How many boats are there in section 4?")
        reference, _ = run_one(engine, "ref", follow_up)
        doc_tokens = len(engine.chat_tokens([{"role": "system", "content": DOC}]))
        poem = [{"role": "user", "content": "Write a long poem about rivers."}]
        run_one(engine, "filler-1", poem)
        run_one(engine, "filler-2", [{"role": "system", "content": "Answer in French."},
                                     {"role": "user", "content": "Name a fruit."}])
        start_generating(engine, "busy", poem)
        assert engine.request_ids() == ["busy"] and engine.busy_runs() == 1
        run_one(engine, "new", [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Write a list of trees."}])
        assert engine.copies == 0 and engine.take_moves() == [(0, 3)] and engine.take_moves() == []
        text, fin = run_one(engine, "again", follow_up)
        assert engine.copies == 1  # from slot 3, off the layout, into the one beside the busy slot
        assert fin.cached_tokens >= doc_tokens - 8, (fin.cached_tokens, doc_tokens)
        assert text == reference, "the moved cache changed the greedy text"
        assert engine.request_ids() == ["busy"]
    finally:
        engine.close()
