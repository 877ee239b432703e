"""One llama.cpp sampler chain per sequence, built from a request's sampling parameters."""

from __future__ import annotations

import ctypes
import random
import re
from typing import Any

import llama_cpp

from server.engine.params import SamplingParams

PENALTY_LAST_N = 64


class GrammarError(ValueError):
    pass


class SamplerChain:
    def __init__(self, params: SamplingParams, n_vocab: int, vocab: Any = None) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._chain: Any = chain
        add = llama_cpp.llama_sampler_chain_add
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))()
            for i, (token, bias) in enumerate(params.logit_bias.items()):
                biases[i] = llama_cpp.llama_logit_bias(token, -1e30 if bias <= -100 else bias)
            add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.grammar is not None and params.grammar_trigger is not None:
            # llama.cpp matches the whole text so far; the grammar starts at the first group
            pattern = "[\\s\\S]*?(" + re.escape(params.grammar_trigger) + ")[\\s\\S]*"
            patterns = (ctypes.c_char_p * 1)(pattern.encode())
            grammar = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, params.grammar.encode(), b"root", patterns, 1, None, 0)
        elif params.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
        if params.grammar is not None:
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                self._chain = None
                raise GrammarError("the constraint could not be compiled into a grammar")
            add(chain, grammar)
        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample (and accept) a token from the `index`-th output of the last decode."""
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
