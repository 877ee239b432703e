"""The KV usage ratio is llama.cpp's count of cells in use (its positions per sequence), on the real
SmolLM2 model: a kept prefix counts, a prefix copied into a second slot counts in both (separate KV
streams: the copy has its own cells), a cleared slot counts nothing."""

from __future__ import annotations

from server.queue.messages import SamplingParams
from tests.engine_helpers import smollm2_engine

DOC = " ".join(f"Item {i}: a lantern, {i} ropes and a map of the coast." for i in range(30))
LONG = SamplingParams(temperature=0, max_tokens=40)
SHORT = SamplingParams(temperature=0, max_tokens=4)


def cells(fraction: float, parallel: int, n_ctx: int) -> int:
    return round(fraction * parallel * n_ctx)


def test_kv_usage_counts_llama_cells_of_kept_and_copied_prefixes() -> None:
    engine = smollm2_engine(parallel=2, n_ctx=1024)
    try:
        assert engine.kv_usage() == 0.0
        tokens = engine.chat_tokens([{"role": "system", "content": DOC}, {"role": "user", "content": "Count."}])
        assert len(tokens) > 300
        engine.add("a", tokens, LONG)
        produced = 0
        while produced < 3:
            produced += sum(o.tokens for o in engine.step() if o.request_id == "a")
        held_a = cells(engine.kv_usage(), 2, 1024)
        assert held_a >= len(tokens), (held_a, len(tokens))  # the prompt plus what it has generated
        # "a" is still busy: a second prompt with the same prefix gets it copied into the free slot
        other = engine.chat_tokens([{"role": "system", "content": DOC}, {"role": "user", "content": "List."}])
        engine.add("b", other, SHORT)
        finished: set[str] = set()
        while "b" not in finished:
            finished |= {o.request_id for o in engine.step() if o.finish is not None}
        assert engine.copies == 1
        both = cells(engine.kv_usage(), 2, 1024)
        # b's own cells (its whole prompt, copied prefix included) are counted beside a's
        assert both >= held_a + len(other), (both, held_a, len(other))
        engine.cancel("a")
        engine.step()
        kept = cells(engine.kv_usage(), 2, 1024)
        assert kept >= 2 * len(tokens) - 16  # finished and cancelled sequences keep their prefixes
        for seq_id in (0, 1):
            engine.model.seq_clear(seq_id)
        engine.step()  # nothing to decode: the figure is the last decode's
        assert engine.model.seq_cells(0) == engine.model.seq_cells(1) == 0
    finally:
        engine.close()
