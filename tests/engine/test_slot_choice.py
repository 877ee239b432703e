"""Where a new prompt goes among free slots, on the real SmolLM2 model: a new conversation that shares
only the chat template's opening tokens with a kept prefix takes an empty slot, so the conversation
that left that prefix still finds it on its next turn; and among slots that serve a prompt equally well,
the busy slots stay one run of consecutive sequence ids (llama.cpp decodes each run in a pass of its own)."""

from __future__ import annotations

import random

from server.engine.batch_engine import BatchEngine
from server.engine.slot_choice import (
    COPY_IN_TOKENS,
    KEPT_PREFIX_TOKENS,
    Slot,
    common_prefix,
    layout,
    place,
    split_passes,
)
from server.queue.messages import SamplingParams
from tests.engine_helpers import smollm2_engine

GREEDY = SamplingParams(temperature=0, max_tokens=4)
DOC = " ".join(f"Entry {i}: the harbour of Wren landed {i * 7} barrels of salt." for i in range(25))


def run(engine: BatchEngine, rid: str, messages: list[dict[str, str]]) -> int:
    """Run one request to its end; its cached prompt tokens."""
    engine.add(rid, engine.chat_tokens(messages), GREEDY)
    while True:
        for out in engine.step():
            if out.request_id == rid and out.finish is not None:
                return out.finish.cached_tokens


def test_a_new_conversation_leaves_another_conversations_kept_prefix_alone() -> None:
    engine = smollm2_engine(parallel=2, n_ctx=1024)
    try:
        first = [{"role": "system", "content": f"Copy A. {DOC}"}, {"role": "user", "content": "Total?"}]
        other = [{"role": "system", "content": f"Copy B. {DOC}"}, {"role": "user", "content": "Total?"}]
        prefix = len(engine.chat_tokens(first[:1]))
        assert run(engine, "a1", first) == 0
        # B shares the template's opening (and "Copy ") with A's kept prefix, nothing worth its slot
        assert run(engine, "b1", other) < 16
        follow_up = [*first, {"role": "assistant", "content": "Many."}, {"role": "user", "content": "And week 3?"}]
        assert run(engine, "a2", follow_up) >= prefix  # A's document was not overwritten by B
        assert run(engine, "b2", [*other, {"role": "assistant", "content": "Many."},
                                  {"role": "user", "content": "And week 3?"}]) >= prefix
    finally:
        engine.close()


def test_clients_repeating_one_prompt_keep_the_busy_slots_consecutive() -> None:
    """Eight requests for one chat fill every slot with its prompt; then four clients send it again as soon as
    each answer ends (answers of different lengths, so they end on different steps). Every free slot serves
    the prompt equally well, and each new request takes the one beside the busy ones, never a gap (the least
    recently used would rotate through all eight and leave the four busy slots scattered)."""
    engine = smollm2_engine(parallel=8, n_ctx=512)
    try:
        messages = [{"role": "user", "content": "Name three colours of the sea."}]
        tokens = engine.chat_tokens(messages)
        for slot in range(8):
            engine.add(f"warm{slot}", tokens, SamplingParams(temperature=0, max_tokens=2))
        while engine.active():
            engine.step()
        lengths = [3, 4, 6, 9]
        sent = 0

        def send(client: int) -> None:
            nonlocal sent
            engine.add(f"c{client}-{sent}", tokens, SamplingParams(temperature=0, max_tokens=lengths[client]))
            sent += 1

        for client in range(4):
            send(client)
        runs: list[int] = []
        while sent < 48:
            for out in engine.step():
                if out.finish is not None:
                    send(int(out.request_id[1:].split("-")[0]))
            runs.append(engine.busy_runs())
        assert engine.active() == 4
        assert max(runs) == 1, f"busy slots split into {max(runs)} runs"
    finally:
        engine.close()


def test_a_prompt_joining_decoding_sequences_is_written_in_sequence_order_so_the_step_is_one_pass() -> None:
    """Slot 2 frees up while 0-1 and 3-7 decode; the next request takes it. Its prompt token goes into the
    batch between sequences 1 and 3, not after 7: written after them (as chosen: decode tokens, then
    prompts), llama.cpp would run the step in two passes (0-1 and 3-7, then 2)."""
    engine = smollm2_engine(parallel=8, n_ctx=512)
    try:
        tokens = engine.chat_tokens([{"role": "user", "content": "Name three colours of the sea."}])
        for slot in range(8):
            engine.add(f"r{slot}", tokens, SamplingParams(temperature=0, max_tokens=1 if slot == 2 else 40))
        while not any(out.request_id == "r2" and out.finish is not None for out in engine.step()):
            pass
        assert engine.busy_runs() == 2
        engine.add("joiner", tokens, GREEDY)
        assert engine.busy_runs() == 1
        outputs = engine.step()
        assert engine.last_passes == 1
        assert {out.request_id for out in outputs} >= {"joiner", "r0", "r7"}
        assert next(out for out in outputs if out.request_id == "joiner").first_token
    finally:
        engine.close()


def test_split_passes_follows_llama_cpps_sequential_split() -> None:
    assert split_passes([]) == 0
    assert split_passes([0, 1, 2, 3, 4, 5, 6, 7]) == 1
    assert split_passes([0, 1, 3, 4, 5, 6, 7, 2]) == 2  # a joiner written after the decoding sequences
    assert split_passes([2, 3, 4, 5, 6, 1, 0, 7]) == 3  # {2-7}, {1}, {0}
    assert split_passes([0, 1, 3]) == 2
    assert split_passes([0, 2, 4, 6]) == 4
    assert split_passes([5, 5, 6]) == 1  # a prompt's tokens are one sequence


# -- the policy alone, on slots described by hand --------------------------------------------------------

PROMPT = list(range(100, 140))


def slots(busy: set[int], held: dict[int, list[int]], last_used: dict[int, int] | None = None) -> list[Slot[str]]:
    """Eight slots: `busy` run a sequence, `held` keep those tokens, `last_used` their admission numbers."""
    table: list[Slot[str]] = [Slot(i) for i in range(8)]
    for slot in table:
        slot.seq = "running" if slot.seq_id in busy else None
        slot.kv_tokens = list(held.get(slot.seq_id, []))
        slot.last_used = (last_used or {}).get(slot.seq_id, 0)
    return table


def test_common_prefix_agrees_with_a_token_by_token_walk() -> None:
    rng = random.Random(19)
    for _ in range(2000):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 60))]
        b = a[:rng.randrange(0, len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 60))]
        walk = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == walk


def test_layout_counts_runs_of_consecutive_busy_ids_and_their_span() -> None:
    assert layout(slots(set(), {})) == (0, 0)
    assert layout(slots({0, 1, 2, 3}, {})) == (1, 4)
    assert layout(slots({0, 2, 4, 6}, {})) == (4, 7)
    table = slots({1, 4}, {})
    assert layout(table, table[2]) == (2, 4)
    assert layout(table, table[5]) == (2, 5)


def test_of_free_slots_holding_the_prompt_the_one_beside_the_busy_ones_wins_over_the_least_recently_used() -> None:
    every = {i: [*PROMPT, 7, i] for i in range(8)}  # all eight hold the prompt (and an old answer)
    table = slots({1, 2, 3}, every, last_used={0: 9, 4: 8, 5: 1, 6: 2, 7: 3})
    chosen = place(table, [*PROMPT, 1])
    assert chosen.slot.seq_id in (0, 4) and chosen.cached == len(PROMPT)
    assert chosen.slot.seq_id == 4  # of the two neighbours, the less recently used
    assert chosen.copy_from is None


def test_a_gap_in_the_busy_slots_is_closed_rather_than_widened() -> None:
    every = {i: [*PROMPT, 7] for i in range(8)}
    table = slots({1, 4}, every, last_used={0: 1, 2: 8, 3: 9, 5: 2, 6: 3, 7: 4})
    first = place(table, [*PROMPT, 1])
    assert first.slot.seq_id in (2, 3)  # every choice leaves two runs; these leave the narrower span
    first.slot.seq = "running"
    second = place(table, [*PROMPT, 2])
    assert layout(table, second.slot) == (1, 4)


def test_a_kept_prefix_off_the_layout_is_copied_beside_the_busy_ones_rather_than_splitting_them() -> None:
    """Slot 6 holds the whole prompt, but taking it would make 0-2 and 6 two runs, a pass more every step
    while they decode: slot 3 takes the prompt, with slot 6's cache copied in (35 tokens saved)."""
    table = slots({0, 1, 2}, {3: PROMPT[:5], 6: [*PROMPT, 9]})
    chosen = place(table, [*PROMPT, 1])
    assert (chosen.slot.seq_id, chosen.cached, chosen.copy_from, chosen.keep_in) == (3, len(PROMPT), table[6], None)
    assert layout(table, chosen.slot) == (1, 4)


def test_a_prefix_off_the_layout_saving_a_few_tokens_is_not_copied() -> None:
    few = 5 + COPY_IN_TOKENS - 1
    table = slots({0, 1, 2}, {3: PROMPT[:5], 6: PROMPT[:few]})
    chosen = place(table, [*PROMPT, 1])
    assert (chosen.slot.seq_id, chosen.cached, chosen.copy_from, chosen.keep_in) == (3, 5, None, None)


def test_a_long_kept_prefix_off_the_layout_is_copied_into_the_slot_beside_the_busy_ones() -> None:
    long_prompt = list(range(1000, 1000 + 2 * KEPT_PREFIX_TOKENS))
    table = slots({0, 1, 2}, {3: long_prompt[:5], 6: [*long_prompt, 9]})
    chosen = place(table, [*long_prompt, 1])
    assert (chosen.slot.seq_id, chosen.cached, chosen.copy_from) == (3, len(long_prompt), table[6])
    assert chosen.keep_in is None  # slot 3's five tokens are not worth a copy


def test_clients_of_one_short_prompt_left_among_kept_documents_start_in_one_run() -> None:
    """What short chats after a mixed load leave: the prompt in slots 0, 1, 3, 4, 6 and 7 (each with an
    answer after it), documents of other requests in 2 and 5. Four clients send the prompt at once: the
    first takes a slot holding it, the others the slots beside it, never a gap. With no empty slot, a
    document in the way is given up rather than moved over a slot holding the prompt."""
    document = list(range(3000, 3000 + 4 * KEPT_PREFIX_TOKENS))
    held = {i: [*PROMPT, 50 + i] for i in (0, 1, 3, 4, 6, 7)}
    table = slots(set(), {**held, 2: [*document, 2], 5: [*document, 5]},
                  last_used={0: 1, 1: 2, 2: 3, 5: 4, 6: 5, 7: 6, 4: 7, 3: 8})
    placements = []
    for client in range(4):
        chosen = place(table, [*PROMPT, 1])
        placements.append(chosen)
        if chosen.keep_in is not None:  # as the engine does: the kept cache first, then the prompt
            assert not chosen.keep_in.kv_tokens
            chosen.keep_in.kv_tokens = chosen.slot.kv_tokens[:]
        chosen.slot.kv_tokens = [*PROMPT, 1]
        chosen.slot.seq = f"client {client}"
    assert layout(table) == (1, 4), [p.slot.seq_id for p in placements]
    assert placements[0].cached == len(PROMPT)
    assert all(p.keep_in is None for p in placements)
    assert sum(s.kv_tokens[:len(document)] == document for s in table) >= 1
    assert sum(s.kv_tokens[:len(PROMPT)] == PROMPT for s in table) >= 6


def test_a_new_conversation_beside_the_busy_ones_moves_a_long_kept_prefix_out_of_its_way() -> None:
    other = list(range(500, 500 + 2 * KEPT_PREFIX_TOKENS))  # another conversation's kept prefix, beside the busy slot
    table = slots({0}, {1: other})
    chosen = place(table, PROMPT)
    assert (chosen.slot.seq_id, chosen.cached) == (1, 0)
    assert chosen.keep_in is not None and chosen.keep_in.seq_id in range(2, 8) and not chosen.keep_in.kv_tokens
    short = slots({0}, {1: other[:40]})  # not worth a copy: overwritten
    assert place(short, PROMPT).slot.seq_id == 1 and place(short, PROMPT).keep_in is None
    full = slots({0}, {i: other for i in range(1, 8)}, last_used={1: 5, 2: 1, 3: 2})
    chosen = place(full, PROMPT)  # every slot keeps as much: none to move it to
    assert chosen.slot.seq_id == 1 and chosen.keep_in is None


def test_with_nothing_busy_a_new_conversation_still_takes_an_empty_slot() -> None:
    other = list(range(500, 500 + 2 * KEPT_PREFIX_TOKENS))
    table = slots(set(), {0: other, 1: other})
    chosen = place(table, PROMPT)
    assert chosen.slot.seq_id == 2 and chosen.keep_in is None and chosen.copy_from is None


def test_a_busy_slots_longer_prefix_is_copied_into_the_free_slot_beside_it() -> None:
    long_prompt = list(range(1000, 1000 + 2 * KEPT_PREFIX_TOKENS))
    table = slots({5}, {5: long_prompt})
    chosen = place(table, [*long_prompt, 1])
    assert chosen.copy_from is table[5] and chosen.cached == len(long_prompt)
    assert chosen.slot.seq_id in (4, 6)
