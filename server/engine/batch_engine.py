"""Continuous batching: up to `parallel` sequences decoded together, one `llama_decode` a step.

Each step puts the next token of every generating sequence into one batch and fills what room is
left with prompt tokens of newcomers (in chunks of at most 512 while others decode; the shortest
prompt first, and a step that can finish a short prompt takes no part of a long one, so a short chat
is never queued behind a long document).
New sequences join between steps; a finished or cancelled one frees its slot at once.
A freed slot keeps its KV cache: a later prompt that shares a prefix with it (the same system
prompt, say) only evaluates the tokens that differ. When the longest such prefix is held by a slot that
is busy (the previous turn of a conversation still generating because its client hung up a moment ago
and the cancel has not landed yet, or another request on the same document), the new sequence takes a
free slot and that prefix is copied into it (`LlamaModel.seq_copy`) rather than evaluated again.
Which slot a prompt takes is `slot_choice`'s policy (the cache, then the busy slots' layout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from server.engine.chat_template import ChatTemplate, default_template
from server.engine.llama_model import LlamaModel
from server.engine.logprobs import token_logprobs
from server.engine.params import SamplingParams
from server.engine.sampling import GrammarError, SamplerChain
from server.engine.slot_choice import Slot, layout, place, split_passes
from server.engine.text_stream import TextStream
from server.engine.token_cache import TokenCache
from server.errors import ContextLengthError, InvalidRequestError

# While other sequences are generating, prompts go in at most this many tokens a step by default (the
# registry's `prefill_chunk`): a long prompt takes a few long steps (the running streams wait through them,
# as llama-server's wait through the whole prompt) rather than many medium ones, during which their clients
# would keep finishing and sending new requests that then meet slow steps too.
PREFILL_CHUNK_WHILE_DECODING = 512
# A prompt with at most this many tokens left is short: a step that can finish one takes nothing of longer
# prompts, so a short chat that arrives while a long document is being read gets its first token in a fast
# step (the document goes on in the next), whether or not other sequences are decoding.
SHORT_PROMPT_TOKENS = 128
SHORT_ONLY_STEPS = 4  # at most this many such steps in a row: a long prompt is never starved by short ones


@dataclass
class Finish:
    reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    prompt_ms: float
    generation_ms: float
    error: str | None = None
    batch_wait_ms: float = 0.0  # admitted -> the step that first took its prompt tokens
    stop_sequence: str | None = None  # which stop sequence ended the text (reason "stop")


@dataclass
class Output:
    request_id: str
    text: str = ""
    tokens: int = 0
    first_token: bool = False
    finish: Finish | None = None
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class _Sequence:
    request_id: str
    prompt: list[int]
    sampler: SamplerChain
    text: TextStream
    max_tokens: int
    cached: int
    t_admit: float
    pending: list[int] = field(default_factory=list)
    next_token: int | None = None
    n_generated: int = 0
    t_first: float | None = None
    t_batched: float | None = None
    logit_index: int = -1
    cancelled: bool = False
    top_logprobs: int | None = None  # None: no logprobs asked


_Slot = Slot[_Sequence]


class BatchEngine:
    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        source = model.chat_template() or default_template(model.meta("general.architecture"))
        self.template = ChatTemplate(source, bos_token=model.bos_text, eos_token=model.eos_text)
        self.token_cache = TokenCache(model.tokenize)
        self.parallel = model.options.parallel
        self.n_ctx = model.n_ctx_seq
        self._slots: list[_Slot] = [Slot(i) for i in range(self.parallel)]
        self._batch: Any = llama_cpp.llama_batch_init(model.n_batch, 0, self.parallel)
        self._by_id: dict[str, _Slot] = {}
        self._short_only_run = 0  # consecutive steps that left long prompts out
        self.prefill_chunk = model.options.prefill_chunk
        self._admissions = 0
        self.copies = 0  # prefixes copied from another slot into the one a prompt takes
        self._moved: list[tuple[int, int]] = []  # kept caches copied out of a prompt's way, not yet taken
        # the last step's batch, in batch order: each sequence's id, its request and how many tokens it had
        self._last_step: list[tuple[int, str, int]] = []
        self._kv_cells = 0  # llama.cpp's cells in use after the last decode (see `kv_usage`)

    # -- capacity -------------------------------------------------------------------------------
    def free_slots(self) -> int:
        return sum(1 for s in self._slots if s.seq is None)

    def active(self) -> int:
        return self.parallel - self.free_slots()

    def kv_usage(self) -> float:
        """Share of the KV cache's cells in use, 0..1, as llama.cpp sees them: the cells each slot's
        sequence holds (`LlamaModel.seq_cells`, from llama.cpp's own positions; kept prefixes of finished
        sequences included) over `parallel` x `n_ctx` cells, as of the last decode. Counted by the decode
        thread after each `llama_decode` (llama.cpp's cache is not read from other threads), so the
        heartbeat and `/metrics` threads only read a number."""
        return self._kv_cells / max(1, self.parallel * self.n_ctx)

    def _count_cells(self) -> None:
        self._kv_cells = sum(self.model.seq_cells(s.seq_id) for s in self._slots)

    def take_moves(self) -> list[tuple[int, int]]:
        """The kept caches that admissions moved out of their way since the last call, in order, as
        (slot copied from, slot copied into): the slot a prompt takes is not always where its cache was."""
        moved, self._moved = self._moved, []
        return moved

    def request_ids(self) -> list[str]:
        return list(self._by_id)

    # -- prompts --------------------------------------------------------------------------------
    def chat_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt's tokens: the template's markup read for special tokens, the messages' text never
        (`<|im_end|>` typed in a message is text, not the end of a turn)."""
        parts = self.template.render_parts(messages)
        bos = self.model.bos_text
        has_bos = bool(parts) and not parts[0].is_message and bool(bos) and parts[0].text.startswith(bos)
        tokens = [self.model.bos] if self.model.add_bos and not has_bos and self.model.bos >= 0 else []
        for part in parts:  # each part alone, so the cache's answer for a part is the answer
            tokens += self.token_cache.tokens(part.text, add_special=False, parse_special=not part.is_message)
        return tokens

    def completion_tokens(self, prompt: str) -> list[int]:
        return list(self.token_cache.tokens(prompt, add_special=True, parse_special=False))

    # -- admission ------------------------------------------------------------------------------
    def add(self, request_id: str, tokens: list[int], params: SamplingParams) -> int:
        """Start a sequence; raises ContextLengthError before taking a slot if it cannot fit. Returns the slot
        (its sequence id) it took."""
        if not tokens:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        room = self.n_ctx - len(tokens)
        if room < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, your messages "
                f"resulted in {len(tokens)} tokens.",
                param="messages",
            )
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthError(
                f"This model's maximum context length is {self.n_ctx} tokens. However, you requested "
                f"{len(tokens) + params.max_tokens} tokens ({len(tokens)} in the messages, "
                f"{params.max_tokens} in the completion). Please reduce the length of the messages "
                "or completion.",
                param="max_tokens",
            )
        unknown = next((t for t in params.logit_bias if not 0 <= t < self.model.n_vocab), None)
        if unknown is not None:
            raise InvalidRequestError(f"Invalid key in 'logit_bias': {unknown} is not a token id of this model "
                                      f"(its vocabulary has {self.model.n_vocab} tokens).", param="logit_bias")
        if not self.free_slots():
            raise RuntimeError("no free slot")  # the worker only takes work for free slots
        try:
            sampler = SamplerChain(params, self.model.n_vocab, self.model.vocab)
        except GrammarError as exc:
            raise InvalidRequestError(f"Invalid output constraint: {exc}.", param="response_format") from None
        placed = place(self._slots, tokens)
        slot, common = placed.slot, placed.cached
        if placed.keep_in is not None:  # the slot's kept cache moves out of the way first
            self.model.seq_copy(slot.seq_id, placed.keep_in.seq_id)
            placed.keep_in.kv_tokens = slot.kv_tokens[:]
            placed.keep_in.last_used = slot.last_used
            self._moved.append((slot.seq_id, placed.keep_in.seq_id))
        if placed.copy_from is not None:
            self.model.seq_copy(placed.copy_from.seq_id, slot.seq_id)
            slot.kv_tokens = placed.copy_from.kv_tokens[:]
            self.copies += 1
        if common < len(slot.kv_tokens) and not self.model.seq_remove(slot.seq_id, common):
            self.model.seq_clear(slot.seq_id)
            common = 0
        del slot.kv_tokens[common:]
        self._admissions += 1
        slot.last_used = self._admissions
        slot.seq = _Sequence(
            request_id=request_id,
            prompt=tokens,
            sampler=sampler,
            text=TextStream(params.stop),
            max_tokens=params.max_tokens if params.max_tokens is not None else room,
            cached=common,
            t_admit=time.perf_counter(),
            pending=tokens[common:],
            top_logprobs=params.top_logprobs if params.logprobs else None,
        )
        self._by_id[request_id] = slot
        return slot.seq_id

    def busy_runs(self) -> int:
        """Runs of consecutive sequence ids among the busy slots: llama.cpp decodes a step's tokens in one
        pass per run, since a non-unified KV cache takes only consecutive streams together."""
        return layout(self._slots)[0]

    @property
    def last_passes(self) -> int:
        """Passes over the model the last step's batch order costs (`slot_choice.split_passes`)."""
        return split_passes([seq_id for seq_id, _request, _tokens in self._last_step])

    @property
    def last_batch(self) -> dict[str, int]:
        """How many tokens each request had in the last step's batch (a prompt's chunk, or its one next token)."""
        return {request_id: tokens for _seq_id, request_id, tokens in self._last_step}

    def cancel(self, request_id: str) -> None:
        slot = self._by_id.get(request_id)
        if slot is not None and slot.seq is not None:
            slot.seq.cancelled = True

    # -- decoding -------------------------------------------------------------------------------
    def _fill_batch(self) -> list[_Slot]:
        """Choose this step's tokens (every decoding sequence's next one, then prompt chunks within the
        budget), then write them to the batch in sequence-id order. Each sequence has a KV stream of its
        own, and llama.cpp puts streams in one pass only while their ids increase by one in batch order
        (`split_equal`, sequential): decode tokens first and a new prompt's after them, as they are chosen,
        would split a step of 0-1 and 3-7 decoding plus 2 joining into two passes."""
        chosen: list[tuple[_Slot, list[int], bool]] = []  # slot, its tokens, whether the last one wants logits
        involved: list[_Slot] = []
        decoding = [s for s in self._slots if s.seq is not None and s.seq.next_token is not None]
        for slot in decoding:
            seq = slot.seq
            assert seq is not None and seq.next_token is not None
            chosen.append((slot, [seq.next_token], True))
            seq.next_token = None
            involved.append(slot)
        budget = self.model.n_batch - len(chosen)
        # the shortest prompt left first: a short chat arriving while a long prompt is being evaluated in
        # chunks is not queued behind it
        prefilling = sorted((s for s in self._slots if s.seq is not None and s.seq.pending and not s.seq.cancelled),
                            key=lambda s: (len(s.seq.pending), s.seq.t_admit) if s.seq else (0, 0.0))
        # a step that can finish a short prompt takes nothing of a long one: beside decoding sequences, and
        # with nothing decoding when a long prompt waits too (else the short one's first token would wait for
        # a whole chunk of the long one); `prefilling` is shortest first, so its ends say both
        pending = [len(s.seq.pending) for s in prefilling if s.seq is not None]
        short_only = (bool(pending) and pending[0] <= SHORT_PROMPT_TOKENS and self._short_only_run < SHORT_ONLY_STEPS
                      and (bool(decoding) or pending[-1] > SHORT_PROMPT_TOKENS))
        if decoding:
            budget = min(budget, self.prefill_chunk)
            if short_only:
                budget = min(budget, SHORT_PROMPT_TOKENS)
        self._short_only_run = self._short_only_run + 1 if short_only else 0
        for slot in prefilling:
            seq = slot.seq
            assert seq is not None
            if budget <= 0 or (short_only and len(seq.pending) > min(budget, SHORT_PROMPT_TOKENS)):
                break
            if seq.t_batched is None:
                seq.t_batched = time.perf_counter()
            take = seq.pending[:budget]
            del seq.pending[:budget]
            budget -= len(take)
            chosen.append((slot, take, not seq.pending))
            if not seq.pending:
                involved.append(slot)
        chosen.sort(key=lambda c: c[0].seq_id)
        self._batch.n_tokens = self._write_batch(chosen)
        self._last_step = [(slot.seq_id, slot.seq.request_id if slot.seq else "", len(tokens))
                           for slot, tokens, _logits in chosen]
        return involved

    def _write_batch(self, chosen: list[tuple[_Slot, list[int], bool]]) -> int:
        """Put each slot's tokens in the batch, in the order given; a sequence whose last token wants logits
        reads them at that token's index. Returns the batch's token count."""
        batch = self._batch
        n = 0
        for slot, tokens, wants_logits in chosen:
            for token in tokens:
                batch.token[n] = token
                batch.pos[n] = len(slot.kv_tokens)
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = 0
                slot.kv_tokens.append(token)
                n += 1
            if wants_logits:
                batch.logits[n - 1] = 1
                assert slot.seq is not None
                slot.seq.logit_index = n - 1
        return n

    def step(self) -> list[Output]:
        """Run one decode step; return what each sequence produced."""
        outputs: list[Output] = []
        for slot in self._slots:
            if slot.seq is not None and slot.seq.cancelled:
                outputs.append(self._finish(slot, "cancelled"))
        involved = self._fill_batch()
        if self._batch.n_tokens == 0:
            return outputs
        rc = llama_cpp.llama_decode(self.model.ctx, self._batch)
        if rc != 0:
            for slot in [s for s in self._slots if s.seq is not None]:
                self.model.seq_clear(slot.seq_id)
                slot.kv_tokens.clear()
                outputs.append(self._finish(slot, "error", error=f"llama_decode failed ({rc})"))
            self._count_cells()
            return outputs
        self._count_cells()
        now = time.perf_counter()
        for slot in involved:
            seq = slot.seq
            if seq is None:
                continue
            token = seq.sampler.sample(self.model.ctx, seq.logit_index)
            out = Output(seq.request_id)
            if seq.t_first is None:
                seq.t_first = now
                out.first_token = True
            if self.model.is_eog(token):
                outputs.append(self._merge(out, self._finish(slot, "stop")))
                continue
            seq.n_generated += 1
            out.tokens = 1
            if seq.top_logprobs is not None:
                out.logprobs = [token_logprobs(self.model, seq.logit_index, token, seq.top_logprobs)]
            out.text = seq.text.push(self.model.piece(token))
            if seq.text.stopped:
                outputs.append(self._merge(out, self._finish(slot, "stop")))
            elif seq.n_generated >= seq.max_tokens or len(slot.kv_tokens) + 1 > self.n_ctx:
                out.text += seq.text.finish()
                outputs.append(self._merge(out, self._finish(slot, "length")))
            else:
                seq.next_token = token
                outputs.append(out)
        return outputs

    @staticmethod
    def _merge(out: Output, fin: Output) -> Output:
        out.text += fin.text
        out.finish = fin.finish
        return out

    def _finish(self, slot: _Slot, reason: str, *, error: str | None = None) -> Output:
        seq = slot.seq
        assert seq is not None
        end = time.perf_counter()
        first = seq.t_first if seq.t_first is not None else end
        tail = seq.text.finish() if reason == "stop" else ""
        fin = Finish(
            reason=reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=seq.n_generated,
            cached_tokens=seq.cached,
            prompt_ms=(first - seq.t_admit) * 1000.0,
            generation_ms=(end - first) * 1000.0,
            error=error,
            batch_wait_ms=((seq.t_batched or end) - seq.t_admit) * 1000.0,
            stop_sequence=seq.text.matched if reason == "stop" else None,
        )
        seq.sampler.close()
        if seq.pending:  # cancelled during prefill: the cache holds a partial prompt, keep it consistent
            seq.pending.clear()
        slot.seq = None
        self._by_id.pop(seq.request_id, None)
        return Output(seq.request_id, text=tail, finish=fin)

    def close(self) -> None:
        for slot in self._slots:
            if slot.seq is not None:
                slot.seq.sampler.close()
                slot.seq = None
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self.model.close()
