"""A GGUF model and its llama.cpp context, wrapped over llama-cpp-python's low-level API.

The context holds `parallel` sequences with separate (non-unified) KV caches, each `n_ctx` long:
with a unified cache a neighbour joining the batch changed a sequence's greedy text; separate
caches keep temperature-0 output identical whether a request runs alone or in a batch.

The context decodes on a persistent ggml threadpool (`threadpool.py`, as llama-server's does) unless
`persistent_threads` is off; `close` frees the context before its pool.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from server.engine.threadpool import DEFAULT_POLL, Threadpool, ThreadpoolError

log = logging.getLogger("slm.engine")

_BACKEND_LOCK = threading.Lock()
_backend_ready = [False]  # process-wide llama.cpp backend initialisation, done once


def _init_backend() -> None:
    with _BACKEND_LOCK:
        if not _backend_ready[0]:
            llama_cpp.llama_backend_init()
            _silence_logs()
            _backend_ready[0] = True


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _quiet_log(level: int, text: bytes, user_data: Any) -> None:
    return None


def _silence_logs() -> None:
    if os.environ.get("SLM_LLAMA_LOGS") != "1":
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelOptions:
    n_ctx: int = 2048
    parallel: int = 1
    n_threads: int | None = None
    n_batch: int = 512
    prefill_chunk: int = 512  # prompt tokens per step while other sequences generate
    n_gpu_layers: int = 0
    embeddings: bool = False
    persistent_threads: bool = True  # a threadpool kept for the context's life (off: one per decode)
    poll: int = DEFAULT_POLL  # the pool's polling level, 0..100 (llama.cpp's --poll)


class LlamaModel:
    """Owns the llama.cpp model, context and vocabulary; everything here is single-threaded."""

    def __init__(self, path: Path, options: ModelOptions) -> None:
        _init_backend()
        self.path = path
        self.options = options
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if options.n_gpu_layers < 0 else options.n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path.name}")
        self.model = model
        threads = options.n_threads or os.cpu_count() or 1
        n_batch = max(options.n_batch, options.parallel)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = options.n_ctx * options.parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = options.parallel
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = False
        cparams.embeddings = options.embeddings
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create a context for {path.name}")
        self.ctx = ctx
        self.threadpool: Threadpool | None = None
        if options.persistent_threads:
            try:
                pool = Threadpool(threads, poll=options.poll)
            except ThreadpoolError as exc:  # a llama.cpp without the functions: decode as before
                log.warning("no persistent threadpool (%s); ggml makes one per step", exc)
            except ValueError:
                self.close()
                raise
            else:
                pool.attach(ctx)
                self.threadpool = pool
        self.n_batch = n_batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_seq = options.n_ctx
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos_text = self._special_text(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos_text = self._special_text(llama_cpp.llama_vocab_eos(self.vocab))

    # -- metadata -------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, True)
        return self._piece_buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        arr = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), arr, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            arr = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), arr, capacity, add_special, parse_special
            )
        return list(arr[:n])

    def piece(self, token: int) -> bytes:
        cached = self._pieces.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # -- KV cache -------------------------------------------------------------------------------
    def seq_remove(self, seq_id: int, start: int = 0) -> bool:
        """Drop a sequence's cache from `start` on; False if the model cannot trim partially."""
        return bool(llama_cpp.llama_memory_seq_rm(self.memory, seq_id, start, -1))

    def seq_copy(self, source: int, target: int) -> None:
        """Make `target`'s cache a copy of `source`'s. The sequences live in separate KV streams, so llama.cpp
        copies the whole stream's buffer (at the next decode) and marks `source`'s cells as `target`'s;
        trim the copy with `seq_remove` afterwards."""
        llama_cpp.llama_memory_seq_cp(self.memory, source, target, 0, -1)

    def seq_cells(self, seq_id: int) -> int:
        """KV cells llama.cpp holds for a sequence: its positions `pos_min..pos_max` (0 when empty). Each
        sequence has its own stream (non-unified cache) and its positions are contiguous from 0, so no
        cell is counted twice: a `seq_copy` copies the stream's buffer rather than sharing cells."""
        high = int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq_id))
        if high < 0:
            return 0
        return high - int(llama_cpp.llama_memory_seq_pos_min(self.memory, seq_id)) + 1

    def seq_clear(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def close(self) -> None:
        """Free the context, then its threadpool (never the other way round), then the model; again: nothing."""
        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            if self.threadpool is not None:
                self.threadpool.forget(self.ctx)
            self.ctx = None
        if self.threadpool is not None:
            self.threadpool.free()
            self.threadpool = None
        if self.model:
            llama_cpp.llama_model_free(self.model)
            self.model = None
