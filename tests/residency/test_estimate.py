"""The memory estimate against generated GGUFs whose sizes are known, and the GGUF header reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import RegistryError
from server.residency.estimate import F32, KV_BYTES_PER_VALUE, RUNTIME_BYTES, cost_of, estimate, model_cost, read_shape
from server.residency.gguf_header import read_header

from .random_gguf import Dims, tensors, write_random_gguf

N_VOCAB = 49152


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dims, int]:
    dims = Dims(n_embd=64, n_layer=3, n_head=4, n_head_kv=2, n_ff=96)
    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    return path, dims, write_random_gguf(path, dims)


def test_header_lists_every_tensor_with_its_shape_and_bytes(small: tuple[Path, Dims, int]) -> None:
    path, dims, written = small
    header = read_header(path)
    expected = tensors(dims, N_VOCAB)
    assert {t.name for t in header.tensors} == set(expected)
    for info in header.tensors:
        assert tuple(reversed(info.shape)) == expected[info.name]  # GGUF lists the fastest dimension first
    assert sum(t.n_bytes for t in header.tensors) == written
    assert header.fields["llama.block_count"] == 3
    assert len(header.fields["tokenizer.ggml.tokens"]) == N_VOCAB


def test_estimate_adds_weights_kv_cache_compute_and_runtime(small: tuple[Path, Dims, int]) -> None:
    path, dims, written = small
    cost = estimate(path, n_ctx=512, parallel=3, n_batch=256)
    head = dims.n_embd // dims.n_head
    assert cost.weights == written
    # K and V per layer, per cell (n_ctx x parallel), per KV head, f16
    assert cost.kv_cache == dims.n_layer * 512 * 3 * dims.n_head_kv * (head + head) * KV_BYTES_PER_VALUE
    assert cost.compute == (3 * N_VOCAB * F32 + 256 * (2 * dims.n_ff + 4 * dims.n_embd) * F32
                            + 256 * 512 * dims.n_head * F32)
    assert cost.runtime == RUNTIME_BYTES
    assert cost.total == cost.weights + cost.kv_cache + cost.compute + cost.runtime


def test_kv_cache_grows_with_context_and_parallel_and_weights_do_not(small: tuple[Path, Dims, int]) -> None:
    shape = read_shape(small[0])
    base = cost_of(shape, n_ctx=256, parallel=1, n_batch=64)
    wider = cost_of(shape, n_ctx=256, parallel=4, n_batch=64)
    longer = cost_of(shape, n_ctx=1024, parallel=1, n_batch=64)
    assert wider.kv_cache == 4 * base.kv_cache == longer.kv_cache
    assert wider.weights == base.weights == longer.weights


def test_a_bigger_model_costs_more(tmp_path: Path, small: tuple[Path, Dims, int]) -> None:
    big = tmp_path / "big.gguf"
    write_random_gguf(big, Dims(n_embd=128, n_layer=4, n_head=4, n_head_kv=2, n_ff=256))
    settings = {"n_ctx": 256, "parallel": 2, "n_batch": 64}
    assert estimate(big, **settings).weights > estimate(small[0], **settings).weights
    assert estimate(big, **settings).kv_cache > estimate(small[0], **settings).kv_cache


def test_a_file_that_is_not_a_gguf_is_a_registry_error_naming_the_model(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all, just some bytes")
    with pytest.raises(RegistryError, match=r"models\.mine\.gguf: cannot estimate its memory: not a GGUF file"):
        model_cost("mine", bogus, n_ctx=256, parallel=1, n_batch=64)


def test_a_truncated_header_is_refused(tmp_path: Path, small: tuple[Path, Dims, int]) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(small[0].read_bytes()[:4096])
    with pytest.raises(ValueError, match="ends inside its GGUF header"):
        read_header(cut)
