"""`/v1/embeddings` on the real SmolLM2 worker, in the spec's shape."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from tests.conftest import LiveServer
from tests.openapi import assert_valid

pytestmark = pytest.mark.integration


def test_embeddings_shape_and_meaning(live_server: LiveServer) -> None:
    body = {"model": "smollm2", "input": ["The cat sat on the mat.", "A cat is lying on a rug.",
                                          "Quarterly revenue grew four percent."]}
    response = httpx.post(live_server.url + "/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert_valid("CreateEmbeddingResponse", data)
    vectors = [d["embedding"] for d in data["data"]]
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    assert data["usage"]["prompt_tokens"] > 10 and data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"]

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert abs(cos(vectors[0], vectors[0]) - 1) < 1e-4
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])


def test_official_client_with_base64_and_single_string(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0)
    floats = client.embeddings.create(model="smollm2", input="hello", encoding_format="float").data[0].embedding
    raw = httpx.post(live_server.url + "/v1/embeddings", timeout=60,
                     json={"model": "smollm2", "input": "hello", "encoding_format": "base64"}).json()
    decoded = struct.unpack(f"<{len(floats)}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert max(abs(a - b) for a, b in zip(decoded, floats, strict=True)) < 1e-6


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "gemma3-270m", "input": "x"}, "model"),
    ({"model": "smollm2", "input": []}, "input"),
    ({"model": "smollm2", "input": "x", "dimensions": 8}, "dimensions"),
    ({"model": "smollm2", "input": "x", "encoding_format": "hex"}, "encoding_format"),
])
def test_embedding_refusals(live_server: LiveServer, body: dict[str, object], param: str) -> None:
    response = httpx.post(live_server.url + "/v1/embeddings", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert_valid("ErrorResponse", response.json())
    assert response.json()["error"]["param"] == param
