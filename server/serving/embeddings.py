"""An embeddings request's body as OpenAI shapes it: one entry per input, in order, each vector as a
list of floats or, with `encoding_format: "base64"`, as base64 of its little-endian float32 bytes
(what the `openai` client asks for by default and decodes with numpy)."""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal


def embeddings_body(model: str, vectors: list[list[float]], used: int,
                    encoding_format: Literal["float", "base64"] | None) -> dict[str, Any]:
    data = [{"object": "embedding", "index": i,
             "embedding": base64_floats(v) if encoding_format == "base64" else v}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": used, "total_tokens": used}}


def base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
