"""Each scoring method on hand-made answers, the tricky ones included."""

from __future__ import annotations

from typing import Any

import pytest

from server.compare.evalset import ChatMessage, EvalItem, load_eval_set
from server.compare.scoring import (
    extract_choice,
    first_json_object,
    normalise,
    score_answer,
    score_choice,
    score_contains,
    score_exact,
    score_json_fields,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Paris. ", "paris"),
        ("**Paris**", "paris"),
        ('"Paris!"', "paris"),
        ("New   York\n City", "new york city"),
        ("\u2212 3", "- 3"),
        ("l\u2019eau", "l'eau"),
        ("ÉCOLE", "école"),
        ("3.5", "3.5"),
        ("...", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ("Paris", ("Paris",), 1.0),
        ("paris.", ("Paris",), 1.0),
        ("  **PARIS**  ", ("Paris",), 1.0),
        ("Paris, France", ("Paris",), 0.0),
        ("The answer is Paris", ("Paris",), 0.0),
        ("yes", ("no", "yes"), 1.0),
        ("Oui !", ("oui",), 1.0),
        ("", ("Paris",), 0.0),
    ],
)
def test_exact(answer: str, expected: tuple[str, ...], score: float) -> None:
    assert score_exact(answer, expected) == score


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ("The answer is 12.", ("12",), 1.0),
        ("7 + 5 = 12", ("12",), 1.0),
        ("112", ("12",), 0.0),
        ("12.5", ("12",), 0.0),
        ("1,2", ("12",), 0.0),
        ("-12", ("12",), 0.0),
        ("It is green.", ("green",), 1.0),
        ("greenish", ("green",), 0.0),
        ("Il reste 8 euros", ("8",), 1.0),
        ("C'est le VERT", ("vert",), 1.0),
        ("down", ("up", "down"), 1.0),
        ("-3 degrees", ("-3",), 1.0),
        ("\u22123 degrees", ("-3",), 1.0),
        ("The chevaux run", ("chevaux",), 1.0),
    ],
)
def test_contains_whole_words(answer: str, expected: tuple[str, ...], score: float) -> None:
    assert score_contains(answer, expected) == score


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("b)", "B"),
        ("(C)", "C"),
        ("**D**", "D"),
        ("C. Paris", "C"),
        ("A Paris", "A"),
        ("The answer is B.", "B"),
        ("Answer: (c)", "C"),
        ("La réponse est D", "D"),
        ("Réponse : A", "A"),
        ("A good answer would be B", "B"),
        ("A dolphin is a mammal, so D", "D"),
        ("I think it is Mars, option B", "B"),
        ("Mars (B)", "B"),
        ("D'après moi, c'est C", "C"),
        ("C'est B", "B"),
        ("The answer is a bit unclear", None),
        ("Mars", None),
        ("", None),
        ("E", None),
    ],
)
def test_extract_choice(answer: str, letter: str | None) -> None:
    assert extract_choice(answer) == letter


def test_choice_score_compares_letters_case_insensitively() -> None:
    assert score_choice("b", "B") == 1.0
    assert score_choice("The answer is C", "B") == 0.0


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"a": 1}', {"a": 1}),
        ('Here you go:\n```json\n{"a": 1, "b": "x"}\n```', {"a": 1, "b": "x"}),
        ('Use {name} as a placeholder. {"a": 2}', {"a": 2}),
        ('[{"a": 1}]', {"a": 1}),
        ('{"a": {"b": 1}} then {"c": 2}', {"a": {"b": 1}}),
        ("{'a': 1}", None),
        ("no json here", None),
        ('{"a": 1', None),
    ],
)
def test_first_json_object(text: str, found: dict[str, Any] | None) -> None:
    assert first_json_object(text) == found


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ('{"name": "Alice", "age": 30}', {"name": "Alice", "age": 30}, 1.0),
        ('{"name": "alice ", "age": "30"}', {"name": "Alice", "age": 30}, 1.0),
        ('{"name": "Alice", "age": 31}', {"name": "Alice", "age": 30}, 0.5),
        ('{"Name": "Alice"}', {"name": "Alice", "age": 30}, 0.5),
        ('{"quantity": 3, "unit_price": 2.50}', {"quantity": 3, "unit_price": 2.5}, 1.0),
        ('{"prix": "2,5"}', {"prix": 2.5}, 1.0),
        ('{"total": "1,000"}', {"total": 1000}, 1.0),
        ('{"code_postal": 31000}', {"code_postal": "31000"}, 1.0),
        ('{"ok": "true"}', {"ok": True}, 0.0),
        ('{"ok": true}', {"ok": True}, 1.0),
        ('{"n": 1}', {"n": True}, 0.0),
        ('{"tags": ["a", "b"]}', {"tags": ["a", "b"]}, 1.0),
        ('{"tags": ["b", "a"]}', {"tags": ["a", "b"]}, 0.0),
        (
            '{"who": {"first": "Claire", "last": "Dubois", "x": 1}}',
            {"who": {"first": "claire", "last": "Dubois"}},
            1.0,
        ),
        ("name: Alice, age: 30", {"name": "Alice", "age": 30}, 0.0),
        ('Sure! {"name": "Alice", "age": 30, "city": "Leeds"}', {"name": "Alice", "age": 30}, 1.0),
    ],
)
def test_json_fields(answer: str, expected: dict[str, Any], score: float) -> None:
    assert score_json_fields(answer, expected) == pytest.approx(score)


def test_score_answer_dispatches_on_the_item_scoring() -> None:
    user: tuple[ChatMessage, ...] = ({"role": "user", "content": "q"},)
    assert score_answer(EvalItem("1", user, ("4",), "exact"), "4.") == 1.0
    assert score_answer(EvalItem("2", user, ("4",), "contains"), "It is 4") == 1.0
    assert score_answer(EvalItem("3", user, ("C",), "choice"), "(C)") == 1.0
    assert score_answer(EvalItem("4", user, {"a": 1, "b": 2}, "json-fields"), '{"a": 1}') == 0.5


def test_echoing_the_question_earns_nothing() -> None:
    messages: tuple[ChatMessage, ...] = (
        {"role": "system", "content": "Réponds uniquement par la lettre (A, B, C ou D) de la bonne réponse."},
        {"role": "user", "content": "Combien font 96 divisé par 8 ?\nA) 12\nB) 8\nC) 96\nD) 6"},
    )
    item = EvalItem("echo", messages, ("A",), "choice")
    echo = f"\n[INST] <<SYS>>\n{messages[0]['content']}\n<</SYS>> {messages[1]['content']} [/INST]"
    assert score_answer(item, echo) == 0.0
    assert score_answer(item, echo + "\nLa réponse est A") == 1.0
    numbers = EvalItem("n", ({"role": "user", "content": "What is 72 divided by 8?"},), ("8",), "contains")
    assert score_answer(numbers, "What is 72 divided by 8? What is 72 divided by 8?") == 0.0


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Answer with A, B, C or D.", None),
        ("(A, B, C ou D) D", "D"),
        ("A) 2\nB) 3\nC) 4\nD) 5", None),
        ("A) 2\nB) 3\nC) 4\nD) 5\nThe answer is C", "C"),
        ("A) Shark\n\nThe correct answer is D) Dolphin.", "D"),
    ],
)
def test_choice_enumerations_pick_nothing(answer: str, letter: str | None) -> None:
    assert extract_choice(answer) == letter


def test_default_set_answers_are_not_in_their_own_questions() -> None:
    for item in load_eval_set().items:
        whole = "\n".join(m["content"] for m in item.messages)
        user = item.messages[-1]["content"]
        assert score_answer(item, whole) == 0.0, item.id
        if item.scoring == "contains":
            assert isinstance(item.expected, tuple)
            assert score_contains(user, item.expected) == 0.0, item.id  # even without the echo rule
        if item.scoring == "choice":
            assert extract_choice(user) is None, item.id
