from __future__ import annotations

import random
import re

import pytest

from server.engine.chat_template import ChatTemplate, _split_on
from server.errors import InvalidRequestError


def test_default_template_is_chatml() -> None:
    text = ChatTemplate(None).render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set x = messages.append({'role': 'x'}) %}{{ x }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    ],
)
def test_hostile_templates_cannot_reach_python_internals(template: str) -> None:
    with pytest.raises(InvalidRequestError):
        ChatTemplate(template).render([{"role": "user", "content": "hi"}])


def test_template_raise_exception_becomes_a_400() -> None:
    template = "{{ raise_exception('no system role') }}"
    with pytest.raises(InvalidRequestError, match="no system role"):
        ChatTemplate(template).render([{"role": "system", "content": "x"}])


def test_gemma_fallback_joins_system_into_the_first_user_turn() -> None:
    from server.engine.chat_template import default_template

    template = ChatTemplate(default_template("gemma3"), bos_token="<bos>")
    text = template.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}])
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")


def test_split_on_placeholders_agrees_with_a_regex_split() -> None:
    """Placeholders anywhere, repeated, adjacent, in any order, or absent: the pieces are what `re.split`
    with a capturing alternation of them gives."""
    rng = random.Random(7)
    for _ in range(500):
        marks = {f"\ue000{rng.randrange(10**6)}.{i}\ue001": "" for i in range(rng.randrange(1, 4))}
        words = [*marks, "a", "<|im_start|>", "\ue000", "1.0", " ", "\ue001"]
        text = "".join(rng.choice(words) for _ in range(rng.randrange(0, 12)))
        expected = re.split("(" + "|".join(map(re.escape, marks)) + ")", text)
        assert _split_on(text, marks) == expected
