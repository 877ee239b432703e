"""An embeddings body: every input's vector in order, as floats or as base64 float32 the client decodes."""

from __future__ import annotations

import base64
import struct

from server.serving.embeddings import embeddings_body


def test_floats_in_input_order_with_usage() -> None:
    body = embeddings_body("m", [[0.5, -1.0], [0.25, 2.0]], 7, "float")
    assert body["object"] == "list" and body["model"] == "m"
    assert [(d["index"], d["embedding"]) for d in body["data"]] == [(0, [0.5, -1.0]), (1, [0.25, 2.0])]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}


def test_base64_is_little_endian_float32() -> None:
    vector = [0.1, -3.5, 1e-3]
    (entry,) = embeddings_body("m", [vector], 3, "base64")["data"]
    raw = base64.b64decode(entry["embedding"])
    assert len(raw) == 4 * len(vector)
    assert list(struct.unpack("<3f", raw)) == [struct.unpack("<f", struct.pack("<f", x))[0] for x in vector]
