"""Score one answer against one item, in 0..1.

    exact        the normalised answer equals one normalised expected string
    contains     one normalised expected string occurs in the normalised answer as whole words
                 ("4" is not found in "14" nor in "4.5")
    choice       the letter the answer picks equals the expected letter; the letter is looked for
                 after "answer is"/"réponse :"..., then at the start, then as the first standalone
                 capital A-D (the English article "A" before a lower-case word does not count);
                 "A, B, C or D" picks nothing, and an answer that lists the options counts only
                 with a stated pick
    json-fields  the fraction of expected fields equal in the first JSON object of the answer
                 (strings compared normalised, numbers numerically, "3" == 3)

Copies of the item's own messages are removed from the answer first: echoing earns nothing.
Normalising: Unicode NFKC, case folded, whitespace collapsed, typographic quotes and dashes made
plain, and wrapping quotes, markdown emphasis and trailing punctuation removed.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from server.compare.evalset import EvalItem

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
    }
)  # fmt: skip
_WRAP = "\"'`*_ "
_TRAILING = _WRAP + ".!?;:,\u2026"
_SPACE = re.compile(r"\s+")
ECHO_MIN_CHARS = 8


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    text = _SPACE.sub(" ", text.casefold()).strip()
    previous = None
    while previous != text:
        previous = text
        text = text.rstrip(_TRAILING).lstrip(_WRAP)
    return text


def score_answer(item: EvalItem, answer: str) -> float:
    """Score `answer`, once the verbatim copies of the item's own messages are taken out of it."""
    answer = strip_echo(answer, item)
    expected = item.expected
    if item.scoring == "json-fields":
        assert isinstance(expected, dict)
        return score_json_fields(answer, expected)
    assert isinstance(expected, tuple)
    if item.scoring == "exact":
        return score_exact(answer, expected)
    if item.scoring == "contains":
        return score_contains(answer, expected)
    return score_choice(answer, expected[0])


def strip_echo(answer: str, item: EvalItem) -> str:
    """Echoing the question earns nothing: a tiny model that repeats "144 divided by 12" has not
    answered 12, nor picked A by repeating "(A, B, C or D)"."""
    for message in item.messages:
        content = message["content"].strip()
        if len(content) >= ECHO_MIN_CHARS:
            answer = answer.replace(content, " ")
    return answer


def score_exact(answer: str, expected: tuple[str, ...]) -> float:
    got = normalise(answer)
    return 1.0 if any(got == normalise(one) for one in expected) else 0.0


def score_contains(answer: str, expected: tuple[str, ...]) -> float:
    got = normalise(answer)
    return 1.0 if any(_whole_words(normalise(one)).search(got) for one in expected) else 0.0


def _whole_words(needle: str) -> re.Pattern[str]:
    before = after = ""
    if needle[:1].isalnum() or needle[:1] == "_":
        before = r"(?<!\w)"
        if needle[:1].isdigit():
            before += r"(?<!\d[.,])(?<!-)"
    if needle[-1:].isalnum() or needle[-1:] == "_":
        after = r"(?!\w)"
        if needle[-1:].isdigit():
            after += r"(?![.,]\d)"
    return re.compile(before + re.escape(needle) + after)


_LETTER = r"(?:([A-D])(?![\w'-])|([a-d])(?=[).\]:]|$))"
_EXPLICIT = re.compile(
    r"(?i:answer|r[ée]ponse|choice|choix|option)\W{0,3}(?i:is|est|would be|serait|:)?\W{0,3}" + _LETTER
)
_LEADING = re.compile(r"^[\s\"'*_(\[]*(?:([A-D])(?=$|[).\]:,]|\s+[^a-z\s])|([a-d])(?=$|[).\]:]))")
_ENUMERATION = re.compile(r"\(?\b[A-D](?:\s*(?:,|/|or|ou|and|et)\s*[A-D]\b){2,}\)?")
_OPTION_LABEL = re.compile(r"^\W*([A-D])[).:]", re.MULTILINE)
_STANDALONE = re.compile(r"(?<![\w'-])([A-D])(?![\w'-])")


def extract_choice(answer: str) -> str | None:
    """The letter A-D that the answer picks, or None."""
    text = unicodedata.normalize("NFKC", answer).translate(_TRANSLATE)
    text = _ENUMERATION.sub(" ", text)  # "(A, B, C or D)" names the options, picks none
    if len(set(_OPTION_LABEL.findall(text))) >= 3:  # the answer lists the options: only a stated pick counts
        found = _EXPLICIT.search(text)
        return (found.group(1) or found.group(2)).upper() if found else None
    for pattern in (_EXPLICIT, _LEADING):
        found = pattern.search(text)
        if found:
            return (found.group(1) or found.group(2)).upper()
    for found in _STANDALONE.finditer(text):
        if found.group(1) == "A" and re.match(r"\s+[a-z]", text[found.end() :]):
            continue  # the English article: "A good answer is B"
        return found.group(1)
    return None


def score_choice(answer: str, expected: str) -> float:
    return 1.0 if extract_choice(answer) == expected.upper() else 0.0


def first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def score_json_fields(answer: str, expected: dict[str, Any]) -> float:
    got = first_json_object(answer)
    if got is None:
        return 0.0
    return sum(_field_equal(value, _lookup(got, key)) for key, value in expected.items()) / len(expected)


_MISSING = object()
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+")


def _lookup(obj: dict[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    folded = key.casefold()
    return next((value for name, value in obj.items() if name.casefold() == folded), _MISSING)


def _field_equal(expected: Any, got: Any) -> bool:
    if got is _MISSING:
        return False
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(_field_equal(v, _lookup(got, k)) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_field_equal(e, g) for e, g in zip(expected, got, strict=True))
        )
    if isinstance(expected, bool) or isinstance(got, bool) or expected is None or got is None:
        return bool(expected is got)
    left, right = _number(expected), _number(got)
    if left is not None and right is not None:
        return math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, str) and isinstance(got, str):
        return normalise(expected) == normalise(got)
    return False


def _number(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
        elif text.count(",") == 1:
            text = text.replace(",", ".")  # French decimal comma
        try:
            number = float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None
