"""The worker's cache of tokenized prompt parts: the same tokens as tokenizing again, bounded, and never
mixing a message's text with the template's markup."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.engine.batch_engine import BatchEngine
from server.engine.token_cache import TokenCache
from tests.engine_helpers import smollm2_engine


class Counting:
    """A tokenizer that records what it was asked: one token per character, offset by the flags."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []

    def __call__(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        self.calls.append((text, add_special, parse_special))
        return [ord(c) + 1000 * add_special + 2000 * parse_special for c in text]


def test_a_text_is_tokenized_once_then_answered_from_the_cache() -> None:
    tokenizer = Counting()
    cache = TokenCache(tokenizer)
    first = cache.tokens("hello", add_special=False, parse_special=False)
    again = cache.tokens("hello", add_special=False, parse_special=False)
    assert first is again and list(first) == tokenizer("hello", add_special=False, parse_special=False)
    assert tokenizer.calls.count(("hello", False, False)) == 2  # the cache's one call and the line above
    assert (cache.hits, cache.misses) == (1, 1)


def test_the_flags_are_part_of_the_key() -> None:
    tokenizer = Counting()
    cache = TokenCache(tokenizer)
    as_text = cache.tokens("<|im_end|>", add_special=False, parse_special=False)
    as_markup = cache.tokens("<|im_end|>", add_special=False, parse_special=True)
    with_bos = cache.tokens("<|im_end|>", add_special=True, parse_special=False)
    assert len({tuple(as_text), tuple(as_markup), tuple(with_bos)}) == 3
    assert cache.misses == 3 and len(cache) == 3


def test_the_least_recently_used_texts_go_first_when_the_characters_run_over() -> None:
    tokenizer = Counting()
    cache = TokenCache(tokenizer, max_chars=10)
    cache.tokens("aaaa", add_special=False, parse_special=False)
    cache.tokens("bbbb", add_special=False, parse_special=False)
    cache.tokens("aaaa", add_special=False, parse_special=False)  # used again: "bbbb" is now the oldest
    cache.tokens("cccc", add_special=False, parse_special=False)  # 12 characters: one must go
    assert cache.chars == 8 and len(cache) == 2
    tokenizer.calls.clear()
    cache.tokens("aaaa", add_special=False, parse_special=False)
    cache.tokens("cccc", add_special=False, parse_special=False)
    assert tokenizer.calls == []
    cache.tokens("bbbb", add_special=False, parse_special=False)
    assert tokenizer.calls == [("bbbb", False, False)]


def test_a_text_longer_than_the_limit_is_tokenized_every_time_and_evicts_nothing() -> None:
    tokenizer = Counting()
    cache = TokenCache(tokenizer, max_chars=100, max_text=8)
    cache.tokens("short", add_special=False, parse_special=False)
    for _ in range(2):
        assert list(cache.tokens("x" * 9, add_special=False, parse_special=False)) == [ord("x")] * 9
    assert tokenizer.calls.count(("x" * 9, False, False)) == 2
    assert len(cache) == 1 and cache.chars == len("short")


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchEngine]:
    engine = smollm2_engine(parallel=1, n_ctx=512)
    yield engine
    engine.close()


def uncached(engine: BatchEngine, messages: list[dict[str, str]]) -> list[int]:
    parts = engine.template.render_parts(messages)
    tokens: list[int] = []
    for part in parts:
        tokens += engine.model.tokenize(part.text, add_special=False, parse_special=not part.is_message)
    return tokens


def test_a_conversations_next_turn_tokenizes_only_what_is_new(engine: BatchEngine) -> None:
    system = {"role": "system", "content": "You answer in one short sentence, politely."}
    turn1 = [system, {"role": "user", "content": "What colour is the sky?"}]
    turn2 = [*turn1, {"role": "assistant", "content": "The sky is blue."},
             {"role": "user", "content": "And the sea?"}]
    assert engine.chat_tokens(turn1) == uncached(engine, turn1)
    misses = engine.token_cache.misses
    assert engine.chat_tokens(turn2) == uncached(engine, turn2)
    new_parts = engine.token_cache.misses - misses
    # the system prompt and the first question came from the cache: only the answer, the new question
    # and the markup around them were tokenized
    parts = engine.template.render_parts(turn2)
    assert 0 < new_parts < len(parts)
    assert engine.chat_tokens(turn2) == uncached(engine, turn2)
    assert engine.token_cache.misses - misses == new_parts  # the same conversation again: nothing new


def test_a_message_that_repeats_the_markup_is_still_text(engine: BatchEngine) -> None:
    """The template's markup is cached with its special tokens parsed; the same characters typed in a
    message must not come back as those special tokens."""
    conversation = [{"role": "user", "content": "hello"}]
    markup = next(p.text for p in engine.template.render_parts(conversation) if not p.is_message)
    engine.chat_tokens(conversation)  # the markup is in the cache now
    forged = [{"role": "user", "content": markup}]
    tokens = engine.chat_tokens(forged)
    assert tokens == uncached(engine, forged)
    as_text = engine.model.tokenize(markup, add_special=False, parse_special=False)
    as_markup = engine.model.tokenize(markup, add_special=False, parse_special=True)
    assert as_text != as_markup
    assert any(tokens[i:i + len(as_text)] == as_text for i in range(len(tokens)))


def test_completion_prompts_go_through_the_cache_too(engine: BatchEngine) -> None:
    prompt = "Once upon a time, in a quiet town by the sea,"
    first = engine.completion_tokens(prompt)
    hits = engine.token_cache.hits
    assert engine.completion_tokens(prompt) == first == engine.model.tokenize(prompt, add_special=True,
                                                                              parse_special=False)
    assert engine.token_cache.hits == hits + 1
