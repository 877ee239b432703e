"""The judge: verdict parsing, single grading with its retry and missing count, pairwise in both orders,
multi-turn items; driven through the command against the fake OpenAI server (the judge is a model
it lists, answering with scripted verdicts, malformed ones too)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from server.compare.command import add_arguments, run
from server.compare.judge import parse_preference, parse_rating
from server.compare.judging import combine

if TYPE_CHECKING:
    from conftest import FakeOpenAI

JUDGE = {"id": "judge", "object": "model", "owned_by": "hosted"}
ITEMS = [
    {"id": "q1", "prompt": "Capital of France?", "expected": "Paris", "scoring": "contains", "category": "geo"},
    {"id": "q2", "prompt": "Capital of Italy?", "expected": "Rome", "scoring": "contains", "category": "geo"},
    {"id": "q3", "scoring": "judge", "category": "writing", "lang": "fr", "turns": ["Un haïku ?", "En anglais ?"]},
]


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Good answer. Rating: [[8]]", 8.0),
        ("[[3]] at first, then on reflection [[7.5]]", 7.5),
        ("Rating: 6/10", 6.0),
        ("**Rating:** 9", 9.0),
        ("[[8/10]]", 8.0),
        ("Rating: [[11]]", None),
        ("[[0]]", None),
        ("I liked it.", None),
        ("", None),
    ],
)
def test_parse_rating(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(
    ("reply", "preference"),
    [("[[A]]", "A"), ("so: [[B]]", "B"), ("[[C]]", "tie"), ("[[A]] or [[B]]", None), ("A is better", None)],
)
def test_parse_preference(reply: str, preference: str | None) -> None:
    assert parse_preference(reply) == preference


@pytest.mark.parametrize(
    ("as_a", "as_b", "outcome"),
    [("A", "B", "win"), ("B", "A", "loss"), ("tie", "tie", "tie"), ("A", "A", "tie"), ("A", "tie", "tie"),
     ("B", "B", "tie"), (None, "B", None), ("A", None, None)],
)  # fmt: skip
def test_both_orders_combine(as_a: Any, as_b: Any, outcome: str | None) -> None:
    assert combine(as_a, as_b) == outcome


def compare(fake: FakeOpenAI, tmp_path: Path, *argv: str) -> tuple[int, dict[str, Any], str, list[str]]:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("\n".join(json.dumps(item, ensure_ascii=False) for item in ITEMS), encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--url", fake.url, "--eval", str(eval_file), "--warmup", "0", "--out", str(out), *argv])
    progress: list[str] = []
    code = run(args, progress=progress.append)
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return code, doc, (out / "report.md").read_text(encoding="utf-8"), progress


def scripted(*replies: str) -> Callable[[list[dict[str, Any]]], str]:
    queue = list(replies)
    return lambda _messages: queue.pop(0)


def judge_requests(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["model"] == "judge"]


def test_single_grading_retries_once_then_counts_a_missing_verdict(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.listed.append(JUDGE)
    fake_openai.answers["fast"] = lambda m: "Paris" if "France" in m[-1]["content"] else "Madrid"
    # q1: read at once; q2: malformed, then read on the retry; q3 turn 1: read; q3 turn 2: malformed twice
    fake_openai.answers["judge"] = scripted("Rating: [[9]]", "Fine.", "[[4]]", "[[6]]", "Hmm.", "Rating: [[12]]")
    code, doc, report, progress = compare(fake_openai, tmp_path, "--models", "fast", "--judge", "judge")
    assert code == 0, progress

    requests = {(r["item_id"], r["turn"]): r for r in doc["requests"]}
    assert list(requests) == [("q1", 1), ("q2", 1), ("q3", 1), ("q3", 2)]
    assert [r["judge_score"] for r in requests.values()] == [9.0, 4.0, 6.0, None]
    assert [r["judgement"]["attempts"] for r in requests.values()] == [1, 2, 1, 2]
    assert requests[("q2", 1)]["judgement"]["replies"] == ["Fine.", "[[4]]"]
    assert requests[("q3", 2)]["judgement"]["value"] is None
    assert requests[("q3", 2)]["judgement"]["replies"] == ["Hmm.", "Rating: [[12]]"]
    assert requests[("q3", 1)]["score"] is None  # judge-only: no rule score
    assert requests[("q1", 1)]["score"] == 1.0 and requests[("q2", 1)]["score"] == 0.0

    # the prompt kept per item: the question, the model's answer and the reference from `expected`
    prompt = requests[("q1", 1)]["judgement"]["prompt"][1]["content"]
    assert "Capital of France?" in prompt and "[The Start of Assistant's Answer]\nParis\n" in prompt
    assert "[The Start of Reference Answer]\nParis\n" in prompt
    turn_two = requests[("q3", 2)]["judgement"]["prompt"][1]["content"]
    assert "### User:\nUn haïku ?" in turn_two and "### User:\nEn anglais ?" in turn_two
    assert "Reference" not in turn_two  # q3 has no reference

    sent = judge_requests(fake_openai)
    assert len(sent) == 6 and all(not r.get("stream") and r["temperature"] == 0.0 for r in sent)
    assert sent[1]["messages"] == sent[2]["messages"]  # the retry asks the same question

    model = doc["models"][0]
    assert (model["judge_score"], model["judged"], model["judge_missing"]) == (pytest.approx(19 / 3), 3, 1)
    assert model["quality"] == 0.5  # q1 right, q2 wrong; q3 is the judge's alone
    assert model["categories"]["writing"] == {"quality": None, "judge_score": 6.0, "n": 2}
    assert model["categories"]["geo"]["judge_score"] == 6.5
    judge = doc["judge"]
    assert (judge["model"], judge["requests"], judge["missing"]) == ("judge", 6, 1)
    assert judge["prompt_tokens"] == 6 * 11 and judge["total_ms"] > 0
    assert "| fast | 6.33 ± " in report and "| 3 | 1 |" in report
    assert "6 request(s)" in report and "1 missing verdict(s)" in report
    assert "judge judge: 6 request(s)" in progress[-2]


def prefers(word: str) -> Callable[[list[dict[str, Any]]], str]:
    """A fair judge: the assistant whose answer holds `word` wins, whichever place it is shown in."""

    def verdict(messages: list[dict[str, Any]]) -> str:
        text = messages[-1]["content"]
        if "Assistant A" not in text:
            return "[[5]]"
        a_part = text.split("[The Start of Assistant A's Answer]")[1].split("[The End of Assistant A's Answer]")[0]
        return "[[A]]" if word in a_part else "[[B]]"

    return verdict


def pairwise(fake: FakeOpenAI, tmp_path: Path) -> tuple[int, dict[str, Any], str, list[str]]:
    fake.listed.append(JUDGE)
    fake.answers["fast"] = lambda _: "Paris"
    fake.answers["slow"] = lambda _: "Lyon"
    return compare(fake, tmp_path, "--models", "fast", "--baseline", "slow", "--judge", "judge", "--limit", "2")


def test_pairwise_asks_both_orders_and_a_fair_judge_gives_wins(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.answers["judge"] = prefers("Paris")
    code, doc, report, _ = pairwise(fake_openai, tmp_path)
    assert code == 0
    assert [m["model"] for m in doc["models"]] == ["fast", "slow"]  # the baseline joins the run
    records = doc["pairwise"]["records"]
    assert [(r["model"], r["baseline"], r["item_id"], r["outcome"]) for r in records] == [
        ("fast", "slow", "q1", "win"), ("fast", "slow", "q2", "win"),
    ]  # fmt: skip
    first, second = records[0]["orders"]
    assert (first["model_as"], first["value"], second["model_as"], second["value"]) == ("A", "A", "B", "B")
    shown_first = first["prompt"][1]["content"]
    shown_second = second["prompt"][1]["content"]
    assert "[The Start of Assistant A's Answer]\nParis\n" in shown_first
    assert "[The Start of Assistant B's Answer]\nLyon\n" in shown_first
    assert "[The Start of Assistant A's Answer]\nLyon\n" in shown_second
    assert "[The Start of Assistant B's Answer]\nParis\n" in shown_second
    assert shown_first.count("Capital of France?") == 1 and "[The Start of Reference Answer]\nParis" in shown_first
    assert doc["pairwise"]["summary"] == [
        {"model": "fast", "baseline": "slow", "wins": 2, "ties": 0, "losses": 0, "missing": 0, "win_rate": 1.0}
    ]
    # 2 models x 2 items single-graded + 2 pairs x 2 orders
    assert len(judge_requests(fake_openai)) == 4 + 4
    assert "| fast | 2 | 0 | 0 | 0 | 1.00 |" in report


def test_pairwise_a_position_biased_judge_gives_ties(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.answers["judge"] = lambda m: "[[A]]" if "Assistant A" in m[-1]["content"] else "[[5]]"
    _, doc, _, _ = pairwise(fake_openai, tmp_path)
    assert [r["outcome"] for r in doc["pairwise"]["records"]] == ["tie", "tie"]
    assert doc["pairwise"]["summary"][0]["win_rate"] == 0.5


def test_pairwise_unreadable_verdict_is_missing_not_a_tie(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.answers["judge"] = lambda m: "[[A]] or maybe [[B]]" if "Assistant A" in m[-1]["content"] else "[[5]]"
    _, doc, report, _ = pairwise(fake_openai, tmp_path)
    assert [r["outcome"] for r in doc["pairwise"]["records"]] == [None, None]
    assert all(o["attempts"] == 2 for r in doc["pairwise"]["records"] for o in r["orders"])
    summary = doc["pairwise"]["summary"][0]
    assert (summary["missing"], summary["win_rate"]) == (2, None)
    assert doc["judge"]["missing"] == 4  # two orders, two pairs
    assert "| fast | 0 | 0 | 0 | 2 | - |" in report


def test_multi_turn_items_feed_the_earlier_answers_back(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.answers["fast"] = lambda m: f"answer to {m[-1]['content']}"
    code, doc, _, _ = compare(fake_openai, tmp_path, "--models", "fast")
    assert code == 0
    turns = [r["messages"] for r in fake_openai.requests if r["messages"][-1]["content"] in ITEMS[2]["turns"]]
    assert turns == [
        [{"role": "user", "content": "Un haïku ?"}],
        [{"role": "user", "content": "Un haïku ?"}, {"role": "assistant", "content": "answer to Un haïku ?"},
         {"role": "user", "content": "En anglais ?"}],
    ]  # fmt: skip
    q3 = [(r["turn"], r["category"]) for r in doc["requests"] if r["item_id"] == "q3"]
    assert q3 == [(1, "writing"), (2, "writing")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baseline", "slow"], "--baseline needs --judge"),
        (["--judge", "nobody"], "unknown model 'nobody'"),
        (["--judge", "fast", "--baseline", "nobody"], "unknown model 'nobody'"),
    ],
)
def test_judge_options_are_checked(
    fake_openai: FakeOpenAI, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--url", fake_openai.url, "--models", "fast", "--out", str(tmp_path), *argv])
    assert run(args, progress=lambda _: None) == 2
    assert message in capsys.readouterr().err
    assert not fake_openai.requests or all(r["model"] != "judge" for r in fake_openai.requests)
