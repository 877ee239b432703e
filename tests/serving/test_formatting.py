"""Stream frames: a plain token's frame, made from bytes cut once per response, is the frame the general
path makes, byte for byte, whatever the text holds."""

from __future__ import annotations

import json

import pytest

from server.serving.formatting import Shape

TEXTS = ["", "hi", " \"quoted\" \\ back", "\n\t\r\x01\x1f", "é 中 🎉", "\u2028\u2029", "\x00", "\\u0000"]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("model", ["smollm2", 'm"o\\del\x00'])
def test_a_text_chunk_is_the_general_frame(endpoint: str, model: str) -> None:
    shape = Shape(endpoint, "chatcmpl-1", 1733355000, model)  # type: ignore[arg-type]
    for text in TEXTS:
        frame = shape.text_chunk(text)
        assert frame == shape.chunk(text=text)
        body = json.loads(frame.removeprefix(b"data: ").removesuffix(b"\n\n"))
        choice = body["choices"][0]
        assert (choice["delta"]["content"] if endpoint == "chat" else choice["text"]) == text
        assert body["model"] == model and choice["finish_reason"] is None


def test_other_chunks_keep_their_fields() -> None:
    shape = Shape("chat", "chatcmpl-1", 1, "m")
    role = json.loads(shape.chunk(role=True, text="")[6:])
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    second = json.loads(shape.chunk(text="x", index=1)[6:])
    assert second["choices"][0]["index"] == 1
    last = json.loads(shape.chunk(finish_reason="stop", extra={"timings": {"prompt_n": 3}})[6:])
    assert last["choices"][0]["finish_reason"] == "stop" and last["timings"] == {"prompt_n": 3}
