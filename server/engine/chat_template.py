"""Render chat messages with the model's own Jinja template, in a sandbox.

Templates come from GGUF files, which are data from elsewhere: they are rendered in Jinja's
`ImmutableSandboxedEnvironment`, so a template cannot reach Python internals or mutate inputs.

`render_parts` keeps the template's markup apart from the messages' text, so that only the markup
is read for special tokens: `<|im_end|>` typed in a message is text, never the end of a turn.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Iterable
from typing import Any, NamedTuple

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from server.errors import InvalidRequestError

# Used when a GGUF carries no template: ChatML, which most small chat models were tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma's turn format, for Gemma GGUFs that carry no template (system text joins the first user turn).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set sys = namespace(text='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set sys.text = sys.text + m['content'] + '\n\n' %}"
    "{% else %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if m['role'] != 'assistant' and sys.text %}{{ sys.text }}{% set sys.text = '' %}{% endif %}"
    "{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def default_template(architecture: str | None) -> str:
    """The template used when a GGUF carries none, by model family."""
    if architecture and architecture.startswith("gemma"):
        return GEMMA_TEMPLATE
    return CHATML_TEMPLATE


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"The model's chat template refused the messages: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


# A placeholder's ends: private-use characters no template markup uses.
_PLACEHOLDER = re.compile("[\ue000\ue001]")


class Part(NamedTuple):
    text: str
    is_message: bool  # a message's text (never read for special tokens), else the template's markup


def _candidates(text: str) -> list[str]:
    """How templates commonly pass a message's text on: as it is, or trimmed (Gemma's `| trim`)."""
    return list(dict.fromkeys((text, text.strip(), text.lstrip(), text.rstrip())))


def _fit(rendered: str, markup: list[str], texts: list[str]) -> list[Part] | None:
    """`rendered` as the template's markup pieces (exactly as rendered with placeholders) around each
    message's text as passed on (`_candidates`); None when it is not that."""
    parts = [Part(markup[0], False)]
    pos = len(markup[0])
    if not rendered.startswith(markup[0]):
        return None
    for text, after in zip(texts, markup[1:], strict=True):
        for candidate in _candidates(text):
            end = pos + len(candidate)
            if rendered.startswith(candidate, pos) and rendered.startswith(after, end):
                parts += [Part(candidate, True), Part(after, False)]
                pos = end + len(after)
                break
        else:
            return None
    return parts if pos == len(rendered) else None


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self.source = source or CHATML_TEMPLATE
        self._template = env.from_string(self.source)
        self._bos = bos_token
        self._eos = eos_token

    def render_parts(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> list[Part]:
        """The prompt as the template's markup and the messages' text, in order (empty parts left out).

        The template is rendered twice: as is, and with each message's text replaced by a placeholder
        no client can guess (digits between private-use characters, which case changes and trimming
        leave alone); what surrounds the placeholders is markup. When the template passed the text on
        as sent (or trimmed, or dropped it) the parts join into exactly the first rendering. A template
        that rewrites message text gets its markup and each message's text as sent; one that rewrote a
        placeholder beyond recognition is refused (a 400), never guessed at.
        """
        rendered = self.render(messages, add_generation_prompt=add_generation_prompt)
        nonce = str(secrets.randbits(96))
        texts: dict[str, str] = {}
        marked: list[dict[str, Any]] = []
        for i, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str) and content:
                placeholder = f"\ue000{nonce}.{i}\ue001"
                texts[placeholder] = content
                message = {**message, "content": placeholder}
            marked.append(message)
        if not texts:
            return [Part(rendered, False)] if rendered else []
        pieces = _split_on(self.render(marked, add_generation_prompt=add_generation_prompt), texts)
        markup, found = pieces[0::2], [texts[p] for p in pieces[1::2]]
        parts = _fit(rendered, markup, found)
        if parts is None:
            if any(_PLACEHOLDER.search(p) for p in markup):
                raise InvalidRequestError("The model's chat template rewrites message text in a way that cannot "
                                          "be kept apart from its markup.", param="messages")
            parts = [Part(p, False) if i % 2 == 0 else Part(texts[p], True) for i, p in enumerate(pieces)]
        return [part for part in parts if part.text]

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except InvalidRequestError:
            raise
        except (TemplateError, OverflowError, RecursionError, MemoryError) as exc:
            raise InvalidRequestError(
                f"The model's chat template failed to render the messages: {type(exc).__name__}",
                param="messages",
            ) from None


def _split_on(text: str, placeholders: Iterable[str]) -> list[str]:
    """`text` split around every occurrence of the placeholders, as `re.split` with a capturing group of
    them would (markup, placeholder, markup, ..., markup), by `str.find`: a pattern made of a fresh nonce
    is compiled anew for every prompt, which cost more than the rest of the split."""
    hits: list[tuple[int, str]] = []
    for placeholder in placeholders:
        start = text.find(placeholder)
        while start != -1:
            hits.append((start, placeholder))
            start = text.find(placeholder, start + len(placeholder))
    hits.sort()
    pieces: list[str] = []
    end = 0
    for start, placeholder in hits:
        pieces += [text[end:start], placeholder]
        end = start + len(placeholder)
    pieces.append(text[end:])
    return pieces
