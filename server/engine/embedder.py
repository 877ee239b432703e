"""Embeddings from a loaded GGUF model: a second, small llama.cpp context with mean pooling.

It shares the model weights with the generation context and is created on first use.
"""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np

from server.engine.llama_model import LlamaModel
from server.errors import ContextLengthError, InvalidRequestError


class Embedder:
    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self._ctx: Any = None
        self._batch: Any = None
        self.n_embd = int(llama_cpp.llama_model_n_embd(model.model))

    def _context(self) -> Any:
        if self._ctx is None:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self.model.n_ctx_seq
            params.n_batch = self.model.n_ctx_seq
            params.n_ubatch = self.model.n_ctx_seq
            params.n_seq_max = 1
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            threads = self.model.options.n_threads or 1
            params.n_threads = threads
            params.n_threads_batch = threads
            self._ctx = llama_cpp.llama_init_from_model(self.model.model, params)
            if not self._ctx:
                raise InvalidRequestError("This model cannot produce embeddings.", param="model")
            self._batch = llama_cpp.llama_batch_init(self.model.n_ctx_seq, 0, 1)
        return self._ctx

    def embed(self, tokens: list[int]) -> list[float]:
        """The L2-normalised mean-pooled embedding of one input."""
        if not tokens:
            raise InvalidRequestError("An input is empty.", param="input")
        if len(tokens) > self.model.n_ctx_seq:
            raise ContextLengthError(
                f"This model's maximum context length is {self.model.n_ctx_seq} tokens; an input has "
                f"{len(tokens)}.", param="input")
        ctx = self._context()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch = self._batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        batch.n_tokens = len(tokens)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise InvalidRequestError("The model could not embed this input.", param="input")
        vec = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(ctx, 0), shape=(self.n_embd,)).copy()
        norm = float(np.linalg.norm(vec))
        return [float(x) for x in (vec / norm if norm > 0 else vec)]

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
