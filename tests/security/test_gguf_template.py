"""A GGUF whose chat template tries to run code: read by llama.cpp, rendered in the sandbox, refused."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from server.engine.chat_template import ChatTemplate
from server.engine.llama_model import LlamaModel, ModelOptions
from server.errors import InvalidRequestError
from server.registry import resolve_gguf
from tests.conftest import REPO, SMOLLM2

TEMPLATE_KEY = b"tokenizer.chat_template"
GGUF_STRING = 8

PAYLOADS = {
    "popen-via-cycler": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "import-via-self": "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "subclasses": "{{ ().__class__.__base__.__subclasses__()[0].__init__.__globals__['sys'].modules['os']"
                  ".system('touch MARKER') }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "helper-globals": "{{ raise_exception.__globals__['__builtins__']['open']('MARKER', 'w') }}",
}


def with_chat_template(source: Path, target: Path, template: str) -> Path:
    """A copy of `source` whose `tokenizer.chat_template` is `template` (padded to the old length in place)."""
    with source.open("rb") as fh:
        head = fh.read(1 << 22)
    marker = struct.pack("<Q", len(TEMPLATE_KEY)) + TEMPLATE_KEY + struct.pack("<I", GGUF_STRING)
    at = head.index(marker) + len(marker)
    (length,) = struct.unpack_from("<Q", head, at)
    padded = template + "{#" + " " * (length - len(template.encode()) - 4) + "#}"
    assert len(padded.encode()) == length, "the payload is longer than the template it replaces"
    shutil.copyfile(source, target)
    with target.open("r+b") as fh:
        fh.seek(at + 8)
        fh.write(padded.encode())
    return target


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_gguf_template_trying_to_run_code_is_refused(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "pwned"
    payload = PAYLOADS[name].replace("MARKER", str(marker))
    source = resolve_gguf(SMOLLM2, registry_dir=REPO, model_dirs=[])
    gguf = with_chat_template(source, tmp_path / "hostile.gguf", payload)

    model = LlamaModel(gguf, ModelOptions(n_ctx=64, parallel=1, n_threads=1))
    try:
        source_text = model.chat_template()  # the same call the engine makes
    finally:
        model.close()
    assert source_text is not None and source_text.startswith(payload)

    with pytest.raises(InvalidRequestError) as info:
        ChatTemplate(source_text).render([{"role": "user", "content": "hi"}])
    assert "SecurityError" in info.value.message
    assert info.value.param == "messages"
    assert not marker.exists()
