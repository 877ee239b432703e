"""Where a new prompt goes among free slots, on the real SmolLM2 model: a new conversation that shares
only the chat template's opening tokens with a kept prefix takes an empty slot, so the conversation
that left that prefix still finds it on its next turn."""

from __future__ import annotations

from server.engine.batch_engine import BatchEngine
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
