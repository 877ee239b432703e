"""The tokens of texts the worker tokenized before, least recently used dropped first.

A chat prompt is tokenized part by part (`BatchEngine.chat_tokens`): the template's markup, the system
prompt and every message separately. Most of those parts come back: the markup around every turn, a
system prompt shared by every request of an application, and a conversation's earlier messages, which
each new turn sends again. Tokenizing costs more than it looks on a worker: the decode steps between two
admissions stream the model's weights through the CPU's caches, so the vocabulary's tables are cold
again at each admission (48 tokens: 0.14 ms warm, 0.6 ms right after a few steps, on this repository's
2-core machine), and the decode thread admits requests one after another between two steps.

A part's tokens do not depend on what surrounds it (each part is tokenized alone), so a cached answer is
the answer. The cache is bounded by the characters it holds (2 M by default, their tokens kept in 4-byte
arrays: a few MB in all). A text longer than `max_text` characters is tokenized every time and never evicts
the rest.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import Protocol


class Tokenizer(Protocol):
    def __call__(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]: ...


class TokenCache:
    def __init__(self, tokenize: Tokenizer, *, max_chars: int = 2_000_000, max_text: int = 100_000) -> None:
        self._tokenize = tokenize
        self.max_chars = max_chars
        self.max_text = max_text
        self._entries: OrderedDict[tuple[str, bool, bool], array[int]] = OrderedDict()
        self._chars = 0
        self.hits = 0
        self.misses = 0

    def tokens(self, text: str, *, add_special: bool, parse_special: bool) -> array[int]:
        """The text's tokens (the cache's own array: read it, do not change it)."""
        key = (text, add_special, parse_special)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found
        self.misses += 1
        tokens = array("i", self._tokenize(text, add_special=add_special, parse_special=parse_special))
        if len(text) <= self.max_text:
            self._entries[key] = tokens
            self._chars += len(text)
            while self._chars > self.max_chars:
                (old, _, _), _ = self._entries.popitem(last=False)
                self._chars -= len(old)
        return tokens

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def chars(self) -> int:
        return self._chars
