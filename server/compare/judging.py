"""The judging pass, once every model has answered: each answer rated, and each model against the baseline.

Single grading sets `judge_score` (1..10, None when the verdict is missing) and `judgement` (the prompt,
replies, parsed verdict) on every successful result. A turn of a multi-turn item is judged with the
model's own conversation up to that turn. The reference is the item's `reference` for that turn, else
what the string rule expects (the letter, the accepted answer, the JSON fields).

Pairwise (with a baseline): every other model's first-repeat answers against the baseline's on the
same item and turn, asked in both orders. The outcome, from the model's side, is a win or a loss only
when both orders agree, and a tie otherwise (MT-Bench's rule for inconsistent verdicts); when either
order's verdict is missing the pair is counted as missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from server.compare.evalset import EvalItem
from server.compare.judge import Judge, Preference, Turn
from server.compare.runner import ModelRun, Progress, RequestResult

Outcome = Literal["win", "tie", "loss"]


@dataclass
class PairRecord:
    model: str
    baseline: str
    item_id: str
    turn: int
    category: str | None
    orders: list[dict[str, Any]] = field(default_factory=list)  # model as A, then model as B
    outcome: Outcome | None = None  # None: a verdict is missing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reference_for(item: EvalItem, turn: int) -> str | None:
    if item.references:
        return item.references[turn - 1]
    expected = item.expected
    if isinstance(expected, dict):
        return json.dumps(expected, ensure_ascii=False)
    if not expected:
        return None
    if item.scoring == "choice":
        return f"The correct option is {expected[0]}."
    return " / ".join(expected)


def dialogue(item: EvalItem, results: Sequence[RequestResult], upto: RequestResult) -> list[Turn]:
    """The (question, answer) turns of `upto`'s conversation, from its own model's earlier answers."""
    if not item.turns:
        question = "\n\n".join(f"{m['role']}: {m['content']}" if m["role"] != "user" else m["content"]
                               for m in item.messages)  # fmt: skip
        return [(question, upto.answer)]
    answers = {r.turn: r.answer for r in results
               if r.item_id == upto.item_id and r.repeat == upto.repeat and r.error is None}  # fmt: skip
    system = [m["content"] for m in item.messages if m["role"] == "system"]
    turns: list[Turn] = []
    for number in range(1, upto.turn + 1):
        question = item.turns[number - 1]
        if number == 1 and system:
            question = f"system: {system[0]}\n\n{question}"
        turns.append((question, answers.get(number, "")))
    return turns


def judge_singles(judge: Judge, runs: Sequence[ModelRun], items: Mapping[str, EvalItem], say: Progress) -> None:
    for run in runs:
        answered = [r for r in run.results if r.error is None]
        for index, result in enumerate(answered, start=1):
            item = items[result.item_id]
            verdict = judge.rate(dialogue(item, run.results, result), reference_for(item, result.turn))
            result.judge_score = verdict.value
            result.judgement = verdict.to_dict()
            shown = "missing" if verdict.value is None else f"{verdict.value:g}/10"
            where = f"{index}/{len(answered)} ({result.item_id} turn {result.turn})"
            say(f"judge {judge.model}: {run.model} {where} {shown}")


def judge_pairs(
    judge: Judge, runs: Sequence[ModelRun], items: Mapping[str, EvalItem], baseline: str, say: Progress
) -> list[PairRecord]:
    base = next((run for run in runs if run.model == baseline), None)
    if base is None:
        return []
    base_answers = {(r.item_id, r.turn): r for r in base.results if r.repeat == 1 and r.error is None}
    records: list[PairRecord] = []
    for run in runs:
        if run.model == baseline:
            continue
        for result in run.results:
            other = base_answers.get((result.item_id, result.turn))
            if result.repeat != 1 or result.error is not None or other is None:
                continue
            item = items[result.item_id]
            mine, theirs = dialogue(item, run.results, result), dialogue(item, base.results, other)
            reference = reference_for(item, result.turn)
            first = judge.prefer(mine, theirs, reference)
            second = judge.prefer(theirs, mine, reference)
            record = PairRecord(run.model, baseline, result.item_id, result.turn, item.category)
            record.orders = [{"model_as": "A", **first.to_dict()}, {"model_as": "B", **second.to_dict()}]
            record.outcome = combine(first.value, second.value)
            records.append(record)
            say(f"judge {judge.model}: {run.model} vs {baseline} ({result.item_id} turn {result.turn}) "
                f"{record.outcome or 'missing'}")  # fmt: skip
    return records


def combine(model_as_a: Preference | None, model_as_b: Preference | None) -> Outcome | None:
    """The model's outcome from the verdict with it shown first (as A) and shown second (as B)."""
    if model_as_a is None or model_as_b is None:
        return None
    first = _side(model_as_a, "A")
    second = _side(model_as_b, "B")
    return first if first == second else "tie"


def _side(preference: Preference, mine: str) -> Outcome:
    if preference == "tie":
        return "tie"
    return "win" if preference == mine else "loss"


@dataclass(frozen=True)
class PairSummary:
    model: str
    baseline: str
    wins: int
    ties: int
    losses: int
    missing: int

    @property
    def win_rate(self) -> float | None:
        """(wins + ties / 2) / judged pairs, None with no judged pair."""
        judged = self.wins + self.ties + self.losses
        return (self.wins + self.ties / 2) / judged if judged else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "win_rate": self.win_rate}


def summarise_pairs(records: Sequence[PairRecord]) -> list[PairSummary]:
    models = list(dict.fromkeys(r.model for r in records))
    out = []
    for model in models:
        mine = [r for r in records if r.model == model]
        out.append(PairSummary(
            model, mine[0].baseline,
            sum(r.outcome == "win" for r in mine), sum(r.outcome == "tie" for r in mine),
            sum(r.outcome == "loss" for r in mine), sum(r.outcome is None for r in mine),
        ))  # fmt: skip
    return out
