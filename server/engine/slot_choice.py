"""Which free slot a new prompt takes: the engine's placement policy, without the model.

A slot is one sequence of the llama.cpp context, with a KV stream of its own (a non-unified cache), and it
keeps its cache after its request ends, so a later prompt sharing a prefix evaluates only the rest. Two
things decide where a prompt goes, the layout first:

- the layout: llama.cpp decodes only consecutive streams in one pass, so busy slots 0, 2, 4 and 6 cost
  four passes over the model a step where 0-3 cost one (`benchmarks/seq_runs.py`: a step of four
  sequences in two runs takes 1.45x one run). A split costs every running sequence a pass each step for as
  long as it lasts, so a prompt takes only a free slot that leaves the busy slots in the fewest runs of
  consecutive ids (`tidy`). Before, a kept prefix came first: clients repeating one short prompt left it
  in slots scattered among others' kept documents, and four of them then decoded in two runs (run 23 in
  `benchmarks/RUNS.md`: 25.9 against 18.4 ms a step at four clients);
- the cache, among the tidy slots: the one holding the longest prefix of the prompt when that prefix is
  worth it, else an empty slot, else the least recently used, so a new conversation does not overwrite
  another's kept prefix for a few template tokens; then the narrower span (a gap the next admission can
  close), then the least recently used. A longer prefix held by any other slot, busy or free, is copied
  into the tidy slot when it saves at least `COPY_IN_TOKENS` over the slot's own; and another
  conversation's kept prefix of at least `KEPT_PREFIX_TOKENS` that the tidy slot would lose is first copied
  out to an empty slot off the layout, when there is one, so neither the layout nor that cache is given up
  (a copy moves a whole KV stream: milliseconds, against a pass per step or a prompt evaluated again).
  Only to an empty slot: moving it over a kept one would give up that one's cache instead (run 23 in
  `benchmarks/RUNS.md`: moves onto the slots of a repeated short prompt cost the mixed load its cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

# Another conversation's kept prefix of at least this many tokens is worth keeping: a new prompt sharing fewer
# with it takes an empty slot before it, and moves it to an empty slot rather than lose it.
KEPT_PREFIX_TOKENS = 64
# A prefix held elsewhere is copied into the slot a prompt takes when it saves at least this many tokens over
# the slot's own: a copy of SmolLM2's 2,048-cell stream adds 3.3 ms to a step here (`benchmarks/RUNS.md`, runs
# 23-25), evaluating the bench's 48-token chat prompt in a step with three decoding sequences ~20 ms.
COPY_IN_TOKENS = 16

S = TypeVar("S")


class Slot(Generic[S]):
    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.kv_tokens: list[int] = []  # tokens whose KV entries are in this sequence's cache
        self.seq: S | None = None  # the sequence it runs; None: free
        self.last_used = 0  # admission counter when it last took a sequence: the least recently used is reused first


@dataclass(frozen=True)
class Placement(Generic[S]):
    slot: Slot[S]
    cached: int  # prompt tokens its cache holds once placed (after the copy, if any)
    copy_from: Slot[S] | None = None  # a slot whose cache is to be copied into `slot` first
    keep_in: Slot[S] | None = None  # a free slot that `slot`'s kept cache is copied into before anything else


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share, by halving: the slice comparisons run in C, so a
    1,500-token conversation takes a dozen Python steps rather than 1,500."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[low:middle] == b[low:middle]:
            low = middle
        else:
            high = middle
    return low


def split_passes(order: list[int]) -> int:
    """Passes over the model llama.cpp makes for one step whose sequences come in the batch in `order` (one
    token each), on a non-unified cache: each pass (`split_equal`, sequential) walks the batch and takes a
    sequence only if its id is one more than the last taken. Sorted consecutive ids take one pass; 1, 2, 3, 0
    takes two, as do 0, 1 and 3."""
    left = list(dict.fromkeys(order))
    passes = 0
    while left:
        last = left[0]
        rest: list[int] = []
        for seq_id in left[1:]:
            if seq_id == last + 1:
                last = seq_id
            else:
                rest.append(seq_id)
        left = rest
        passes += 1
    return passes


def layout(slots: list[Slot[S]], extra: Slot[S] | None = None) -> tuple[int, int]:
    """The busy slots' runs of consecutive ids (with `extra` busy too; in id order, so one pass each), and
    their span, first to last."""
    busy = [i for i, s in enumerate(slots) if s.seq is not None or s is extra]
    return split_passes(busy), (busy[-1] - busy[0] + 1 if busy else 0)


def place(slots: list[Slot[S]], tokens: list[int]) -> Placement[S]:
    """Where `tokens` go among the free slots of `slots` (at least one), and what of them is cached there."""
    free = [s for s in slots if s.seq is None]
    limit = len(tokens) - 1  # the last prompt token is always evaluated: its logits start the answer
    held = {slot.seq_id: common_prefix(slot.kv_tokens, tokens) for slot in slots}
    layouts = {slot.seq_id: layout(slots, slot) for slot in free}
    fewest = min(runs for runs, _span in layouts.values())
    tidy = [s for s in free if layouts[s.seq_id][0] == fewest]

    def fresh(slot: Slot[S]) -> tuple[bool, tuple[int, int], int]:  # a slot taken without its prefix
        return bool(slot.kv_tokens), layouts[slot.seq_id], slot.last_used

    def reused(slot: Slot[S]) -> tuple[int, int, int]:
        return held[slot.seq_id], -layouts[slot.seq_id][1], -slot.last_used

    best = max(tidy, key=reused)
    common = min(held[best.seq_id], limit)
    if common < KEPT_PREFIX_TOKENS and 2 * common < len(tokens) and common < len(best.kv_tokens):
        # a few shared tokens (the chat template's opening) are not worth another conversation's kept
        # prefix: take an empty slot, else a kept one (by layout, then the least recently used)
        best = min(tidy, key=fresh)
        common = min(held[best.seq_id], limit)
    donor = max(slots, key=lambda s: held[s.seq_id])
    shared = min(held[donor.seq_id], limit)
    if donor in tidy or shared < common + COPY_IN_TOKENS:
        placed = Placement(best, common)
    else:
        placed = Placement(min(tidy, key=fresh), shared, copy_from=donor)
    return _keep_elsewhere(placed, [s for s in free if layouts[s.seq_id][0] > fewest], held)


def _keep_elsewhere(placed: Placement[S], untidy: list[Slot[S]], held: dict[int, int]) -> Placement[S]:
    """`placed`, with its slot's kept prefix copied first into an empty slot off the layout when that prefix
    is another conversation's (it shares fewer than `KEPT_PREFIX_TOKENS` with the prompt) of at least
    `KEPT_PREFIX_TOKENS`. Only into an empty slot: a kept one may hold what another conversation comes back
    for; and the tail after a shared prefix (a finished answer) is given up, as a reused slot always gave it."""
    slot = placed.slot
    if len(slot.kv_tokens) < KEPT_PREFIX_TOKENS or held[slot.seq_id] >= KEPT_PREFIX_TOKENS:
        return placed
    spare = next((s for s in untidy if not s.kv_tokens), None)
    return placed if spare is None else Placement(slot, placed.cached, placed.copy_from, keep_in=spare)
