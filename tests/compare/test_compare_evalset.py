"""Eval files: the built-in set loads; every malformed line is refused with file and line named."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from server.compare.errors import EvalFileError
from server.compare.evalset import load_eval_set, parse_eval_text

GOOD = json.dumps({"id": "q1", "prompt": "2+2?", "expected": "4", "scoring": "contains"})


def test_builtin_set_is_a_few_dozen_items_in_english_and_french() -> None:
    eval_set = load_eval_set()
    assert eval_set.source == "builtin:default_eval.jsonl"
    assert 30 <= len(eval_set.items) <= 60
    assert set(Counter(i.lang for i in eval_set.items)) == {"en", "fr"}
    assert set(Counter(i.scoring for i in eval_set.items)) == {"exact", "contains", "choice", "json-fields"}
    # the first items already mix kinds and languages, so that --limit gives a fair sample
    assert {i.scoring for i in eval_set.items[:4]} >= {"choice", "contains", "json-fields"}
    assert {i.lang for i in eval_set.items[:4]} == {"en", "fr"}


def test_limit_takes_the_first_items() -> None:
    eval_set = load_eval_set().head(3)
    assert [i.id for i in eval_set.items] == [i.id for i in load_eval_set().items[:3]]


def test_prompt_system_and_messages(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    lines = [
        {
            "id": 1,
            "system": "Be brief.",
            "prompt": "Capital of France?",
            "expected": ["Paris"],
            "scoring": "exact",
        },
        {},
        {
            "id": "conv",
            "messages": [
                {"role": "user", "content": "Remember 7."},
                {"role": "assistant", "content": "OK."},
                {"role": "user", "content": "Which number?"},
            ],
            "expected": 7,
            "scoring": "contains",
            "lang": "en",
        },
        {"id": "mc", "prompt": "Pick", "expected": "c", "scoring": "choice"},
    ]
    path.write_text(
        "\n".join("" if not line else json.dumps(line) for line in lines) + "\n", encoding="utf-8"
    )
    items = load_eval_set(path).items
    assert [i.id for i in items] == ["1", "conv", "mc"]
    assert items[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert items[0].expected == ("Paris",)
    assert items[1].expected == ("7",) and items[1].line == 3 and len(items[1].messages) == 3
    assert items[2].expected == ("C",)


def entry(**fields: Any) -> str:
    """A JSON line: a valid item, with `fields` changed (a field given as DROP is removed)."""
    base: dict[str, Any] = {"id": "x", "prompt": "p", "expected": "4", "scoring": "exact"}
    return json.dumps({k: v for k, v in {**base, **fields}.items() if v is not DROP})


DROP = object()
USER_ONLY = [{"role": "user"}]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (entry()[:-1], "invalid JSON: Expecting ',' delimiter"),
        ('["not", "an", "object"]', "expected a JSON object, got a list"),
        (entry(scorring=1), "unknown field 'scorring'"),
        (entry(id=DROP), "field 'id' must be a non-empty string"),
        (entry(id=" "), "field 'id' must be a non-empty string"),
        (entry(scoring="fuzzy"), "field 'scoring' must be one of exact, contains, choice, json-fields"),
        (entry(expected=DROP), "field 'expected' is required"),
        (entry(prompt=DROP), "exactly one of 'prompt', 'messages' or 'turns'"),
        (entry(messages=[]), "exactly one of 'prompt', 'messages' or 'turns'"),
        (entry(prompt="  "), "field 'prompt' must be a non-empty string"),
        (entry(prompt=DROP, messages=[]), "field 'messages' must be a non-empty list"),
        (entry(prompt=DROP, messages=[{"role": "bot", "content": "hi"}]), "messages[0].role must be one of"),
        (entry(prompt=DROP, messages=USER_ONLY), "messages[0] must be an object with exactly"),
        (
            entry(prompt=DROP, messages=[{"role": "user", "content": 1}]),
            "messages[0].content must be a string",
        ),
        (entry(prompt=DROP, messages=[{"role": "assistant", "content": "a"}]), "last message must not be"),
        (entry(expected="E", scoring="choice"), "choice letter A-D is required; got 'E'"),
        (entry(expected={}, scoring="json-fields"), "non-empty object"),
        (entry(expected="a", scoring="json-fields"), "non-empty object"),
        (entry(expected="", scoring="contains"), "an empty expected answer matches everything"),
        (entry(expected=[], scoring="contains"), "the list of acceptable answers is empty"),
        (entry(expected=True), "a string, a number or a list of them is required; got a boolean"),
        (entry(expected=[None]), "got null"),
        (entry(lang=5), "field 'lang' must be a non-empty string"),
        (entry(system=3), "field 'system' must be a non-empty string"),
        (entry(id="q1"), "duplicate id 'q1' (first on line 1)"),
        (entry(prompt=DROP, turns=["a"]), "an item with 'turns' is graded by the judge"),
        (entry(prompt=DROP, turns=[], scoring="judge", expected=DROP), "field 'turns' must be a non-empty list"),
        (entry(prompt=DROP, turns=["a", " "], scoring="judge", expected=DROP), "each of 'turns' must be"),
        (entry(turns=["a"], scoring="judge", expected=DROP), "exactly one of 'prompt', 'messages' or 'turns'"),
        (entry(scoring="judge"), "'expected' is not used with scoring 'judge'"),
        (entry(prompt=DROP, turns=["a", "b"], scoring="judge", expected=DROP, reference=["r"]),
         "field 'reference' must be a list of 2 strings, one per turn"),
        (entry(reference=["r"]), "field 'reference' must be a non-empty string"),
        (entry(category=""), "field 'category' must be a non-empty string"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD.replace('q1', 'q9')}\n", encoding="utf-8")
    with pytest.raises(EvalFileError) as caught:
        load_eval_set(path)
    assert caught.value.line == 3
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{path}:3: ")
    assert reason in str(caught.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        GOOD.encode() + b"\n" + GOOD.replace("q1", "q2").replace("2+2", "d\xe9j\xe0").encode("latin-1")
    )
    with pytest.raises(EvalFileError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_eval_set(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(EvalFileError, match=r"nope\.jsonl: no such file"):
        load_eval_set(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(EvalFileError, match="no evaluation items") as caught:
        load_eval_set(empty)
    assert caught.value.line is None


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert [i.id for i in load_eval_set(path).items] == ["q1"]


def test_text_api_names_the_source() -> None:
    with pytest.raises(EvalFileError, match=r"^inline:2: invalid JSON"):
        parse_eval_text(GOOD + "\n{oops}\n", "inline")


def test_multi_turn_items_and_the_shipped_bilingual_set(tmp_path: Path) -> None:
    path = tmp_path / "mt.jsonl"
    path.write_text(json.dumps({"id": "m", "scoring": "judge", "system": "Be kind.", "category": "roleplay",
                                "turns": ["Hi", "Bye"], "reference": ["Hello", "Goodbye"]}) + "\n", encoding="utf-8")
    (item,) = load_eval_set(path).items
    assert item.turns == ("Hi", "Bye") and item.turn_count == 2 and item.references == ("Hello", "Goodbye")
    assert item.messages == ({"role": "system", "content": "Be kind."},)
    assert (item.expected, item.category) == ((), "roleplay")

    shipped = load_eval_set(Path("builtin:multiturn_eval.jsonl"))
    assert shipped.source == "builtin:multiturn_eval.jsonl"
    assert all(len(i.turns) >= 2 and i.scoring == "judge" for i in shipped.items)
    assert {i.category for i in shipped.items} == {"writing", "extraction", "reasoning", "coding", "roleplay"}
    for category in ("writing", "extraction", "reasoning", "coding", "roleplay"):
        assert {i.lang for i in shipped.items if i.category == category} == {"en", "fr"}
    with pytest.raises(EvalFileError, match="no such built-in set"):
        load_eval_set(Path("builtin:nothing.jsonl"))
