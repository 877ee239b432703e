"""Jobs a worker answers at once, between two decode steps, without a slot: embeddings (small models
embed in milliseconds) and token counts (a chat prompt's template, tools described, tokenized)."""

from __future__ import annotations

from server.engine.batch_engine import BatchEngine
from server.engine.embedder import Embedder
from server.errors import InvalidRequestError
from server.queue.messages import Job
from server.worker.grammar import constrained


def answer(job: Job, engine: BatchEngine, embedder: Embedder | None) -> tuple[int, list[list[float]] | None]:
    """(prompt tokens, embeddings or None) of an `embedding` or `tokenize` job; raises SlmError."""
    if job.kind == "tokenize":
        messages, _ = constrained(job)
        return len(engine.chat_tokens(messages)), None
    if embedder is None:
        raise InvalidRequestError("This model does not serve embeddings.", param="model")
    vectors, used = [], 0
    for item in job.inputs or []:
        tokens = (engine.model.tokenize(item, add_special=True, parse_special=False)
                  if isinstance(item, str) else list(item))
        used += len(tokens)
        vectors.append(embedder.embed(tokens))
    return used, vectors
