"""OpenAI's logprob entry for a sampled token, from the raw logits llama.cpp left for its position."""

from __future__ import annotations

from typing import Any

import llama_cpp
import numpy as np

from server.engine.llama_model import LlamaModel


def token_logprobs(model: LlamaModel, index: int, token: int, top: int) -> dict[str, Any]:
    """The entry of `token` (sampled from the `index`-th output of the last decode) with its `top` most
    likely alternatives: each with its text, log probability and bytes."""
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, index), shape=(model.n_vocab,))
    peak = float(logits.max())
    log_norm = peak + float(np.log(np.exp(logits - peak).sum()))

    def entry(tok: int) -> dict[str, Any]:
        data = model.piece(tok)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": float(logits[tok]) - log_norm,
                "bytes": list(data)}

    result = entry(token)
    if top > 0:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(logits[best])[::-1]]
        result["top_logprobs"] = [entry(int(t)) for t in best]
    else:
        result["top_logprobs"] = []
    return result
