"""What a local model will cost in memory, from its GGUF metadata, before it is loaded.

`estimate(...)` reads the file's header (`gguf_header`, with the `gguf` package's type tables; tensor
data is not read)
and adds up, in bytes:

- `weights`: the tensors as stored (their quantised sizes; llama.cpp maps the file, and on a CPU
  every page of it is touched by the first forward pass, so all of it becomes resident);
- `kv_cache`: K and V of every layer for `n_ctx` x `parallel` cells (the worker's context:
  `server/engine/llama_model.py`), at f16 (2 bytes; llama.cpp's default cache type):
  `n_layer x n_ctx x parallel x n_head_kv x (key_length + value_length) x 2`. Head dimensions are
  `attention.key_length` / `value_length` when the file gives them, else `embedding_length /
  head_count`. Sliding-window layers (gemma3) are counted in full: an upper bound;
- `compute`: llama.cpp's output and compute buffers, estimated as `parallel x n_vocab x 4` (the
  logits of one step's last tokens) plus `n_batch x (2 x n_ff + 4 x n_embd) x 4` (the widest
  activations of an `n_batch`-token step in f32) plus `n_batch x n_ctx x n_head x 4` (attention
  scores without flash attention) — a documented estimate, an upper bound of what the measured RSS
  shows (tests/residency);
- `runtime`: the worker process itself (Python, llama-cpp-python, Redis client, the server's
  modules), a constant measured on this project's workers (~72 MiB before any model is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import RegistryError
from server.residency.gguf_header import read_header

RUNTIME_BYTES = 128 * 1024 * 1024  # a worker besides its model (measured: ~72 MiB before loading; threads, allocator)
KV_BYTES_PER_VALUE = 2  # f16 cache, llama.cpp's default type_k / type_v
F32 = 4


@dataclass(frozen=True)
class Cost:
    """Estimated bytes of one worker process of a model."""

    weights: int
    kv_cache: int
    compute: int
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.runtime

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "compute": self.compute,
                "runtime": self.runtime, "total": self.total}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a GGUF's metadata."""

    weight_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_ff: int
    n_vocab: int


def _field(fields: dict[str, Any], key: str) -> Any:
    value = fields.get(key)
    if isinstance(value, list):  # per-layer values (some architectures): the largest
        return max(value) if value else None
    return value


def read_shape(path: Path) -> Shape:
    """The sizes the estimate needs, from the file's header; `ValueError` when it lacks them."""
    try:
        header = read_header(path)
    except OSError as exc:
        raise ValueError(f"cannot read the file: {exc.strerror}") from None
    fields = header.fields
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise ValueError("no general.architecture in the file")

    def number(name: str, default: int | None = None) -> int:
        value = _field(fields, f"{arch}.{name}")
        if value is None:
            if default is None:
                raise ValueError(f"no {arch}.{name} in the file")
            return default
        return int(value)

    n_embd = number("embedding_length")
    n_head = number("attention.head_count")
    head_dim = n_embd // max(1, n_head)
    tokens = fields.get("tokenizer.ggml.tokens")
    n_vocab = number("vocab_size", len(tokens) if isinstance(tokens, list) else 0)
    return Shape(
        weight_bytes=sum(t.n_bytes for t in header.tensors),
        n_layer=number("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=number("attention.head_count_kv", n_head),
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
        n_ff=number("feed_forward_length", 4 * n_embd),
        n_vocab=n_vocab,
    )


def cost_of(shape: Shape, *, n_ctx: int, parallel: int, n_batch: int) -> Cost:
    """The estimate for one worker of a model of this shape with the registry's context settings."""
    cells = n_ctx * parallel
    batch = max(n_batch, parallel)  # the worker's context takes at least one token per sequence
    kv = shape.n_layer * cells * shape.n_head_kv * (shape.key_length + shape.value_length) * KV_BYTES_PER_VALUE
    compute = parallel * shape.n_vocab * F32 + batch * (2 * shape.n_ff + 4 * shape.n_embd) * F32
    compute += batch * n_ctx * shape.n_head * F32
    return Cost(weights=shape.weight_bytes, kv_cache=kv, compute=compute)


def estimate(path: Path, *, n_ctx: int, parallel: int, n_batch: int) -> Cost:
    return cost_of(read_shape(path), n_ctx=n_ctx, parallel=parallel, n_batch=n_batch)


def model_cost(name: str, path: Path, *, n_ctx: int, parallel: int, n_batch: int) -> Cost:
    """`estimate`, with an unreadable file a registry error naming the model."""
    try:
        return estimate(path, n_ctx=n_ctx, parallel=parallel, n_batch=n_batch)
    except ValueError as exc:
        raise RegistryError(f"models.{name}.gguf: cannot estimate its memory: {exc}") from None
