"""A judge model grades answers, as MT-Bench does (Zheng et al., 2023, "Judging LLM-as-a-judge").

    single    one answer (the last turn of a dialogue) rated 1..10, with the reference answer when
              the item has one; the verdict is the `[[rating]]` the judge writes at the end
    pairwise  two assistants' answers to the same dialogue turn; the verdict is `[[A]]`, `[[B]]` or
              `[[C]]` (a tie). The caller asks it in both orders to cancel the position bias.

A reply whose verdict cannot be parsed (or a failed judge request) is asked once more; a second
failure leaves the verdict missing (`value` None), never a score. Every prompt and reply is kept.
The judge is any model the server lists (typically hosted), asked with temperature 0, not streamed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from server.compare.evalset import ChatMessage

Preference = Literal["A", "B", "tie"]
T = TypeVar("T")
ATTEMPTS = 2  # the first ask and one retry
RATING_MIN, RATING_MAX = 1.0, 10.0
Turn = tuple[str, str]  # (user question, assistant answer)

SYSTEM = "You are a helpful assistant."
_SINGLE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as "
    "the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response, and "
    "that it is written in the language of the question.{reference_note}{turn_note} Begin your evaluation "
    "by providing a short explanation. Be as objective as possible. After providing your explanation, "
    'you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", '
    'for example: "Rating: [[5]]".'
)
_PAIR = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better.{reference_note}{turn_note} Avoid any position "
    "biases and ensure that the order in which the responses were presented does not influence your "
    "decision. Do not favor certain names of the assistants. Be as objective as possible. After "
    'providing your explanation, output your final verdict by strictly following this format: "[[A]]" '
    'if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
_REFERENCE_NOTE = " A reference answer is given: compare the response(s) with it, and identify mistakes."
_TURN_NOTE = " Focus on the answer to the last user question of the conversation."

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
_RATING_LOOSE = re.compile(r"(?i)\brating\s*:?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\b")
_PREFERENCE = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(reply: str) -> float | None:
    """The last `[[n]]` (or, lacking one, `Rating: n`) in 1..10; None when there is none or it is out of range."""
    found = _RATING.findall(reply) or _RATING_LOOSE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if RATING_MIN <= value <= RATING_MAX else None


def parse_preference(reply: str) -> Preference | None:
    """`[[A]]`, `[[B]]` or `[[C]]` (tie); None when there is none, or when the reply gives two different ones."""
    found = set(_PREFERENCE.findall(reply))
    if len(found) != 1:
        return None
    letter = found.pop()
    return "tie" if letter == "C" else cast(Preference, letter)


def _dialogue(turns: Sequence[Turn], name: str) -> str:
    if len(turns) == 1:
        question, answer = turns[0]
        return (
            f"[Question]\n{question}\n\n[The Start of {name}'s Answer]\n{answer}\n[The End of {name}'s Answer]"
        )
    parts = [f"<|The Start of {name}'s Conversation with User|>"]
    for question, answer in turns:
        parts += [f"### User:\n{question}", f"### {name}:\n{answer}"]
    parts.append(f"<|The End of {name}'s Conversation with User|>")
    return "\n\n".join(parts)


def _reference(reference: str | None) -> str:
    if reference is None:
        return ""
    return f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"


def single_prompt(turns: Sequence[Turn], reference: str | None) -> list[ChatMessage]:
    """The messages asking for a 1..10 rating of the last answer in `turns`."""
    instruction = _SINGLE.format(
        reference_note=_REFERENCE_NOTE if reference is not None else "",
        turn_note=_TURN_NOTE if len(turns) > 1 else "",
    )
    body = f"[Instruction]\n{instruction}\n\n{_reference(reference)}{_dialogue(turns, 'Assistant')}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def pair_prompt(turns_a: Sequence[Turn], turns_b: Sequence[Turn], reference: str | None) -> list[ChatMessage]:
    """The messages asking which of two assistants answered the last question better (A, B or tie)."""
    instruction = _PAIR.format(
        reference_note=_REFERENCE_NOTE if reference is not None else "",
        turn_note=_TURN_NOTE if len(turns_a) > 1 else "",
    )
    if len(turns_a) == 1:  # one question, then the two answers
        answers = [f"[The Start of {name}'s Answer]\n{turns[0][1]}\n[The End of {name}'s Answer]"
                   for name, turns in (("Assistant A", turns_a), ("Assistant B", turns_b))]  # fmt: skip
        shown = f"[User Question]\n{turns_a[0][0]}\n\n" + "\n\n".join(answers)
    else:
        shown = f"{_dialogue(turns_a, 'Assistant A')}\n\n{_dialogue(turns_b, 'Assistant B')}"
    body = f"[Instruction]\n{instruction}\n\n{_reference(reference)}{shown}"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


@dataclass
class Verdict(Generic[T]):
    """One question to the judge: what was sent, every reply (or error), and the parsed value."""

    prompt: list[ChatMessage]
    replies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    value: T | None = None
    attempts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeUsage:
    """What the judge itself cost: its requests, time (client clock) and tokens, apart from the models'."""

    model: str
    requests: int = 0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    missing: int = 0  # verdicts still unparsed after the retry
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Asks `model` through `client`; one retry when the verdict cannot be read."""

    def __init__(self, client: openai.OpenAI, model: str, max_tokens: int = 512) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.usage = JudgeUsage(model)

    def rate(self, turns: Sequence[Turn], reference: str | None) -> Verdict[float]:
        return self._ask(single_prompt(turns, reference), parse_rating)

    def prefer(self, turns_a: Sequence[Turn], turns_b: Sequence[Turn], reference: str | None) -> Verdict[Preference]:
        return self._ask(pair_prompt(turns_a, turns_b, reference), parse_preference)

    def _ask(self, prompt: list[ChatMessage], parse: Callable[[str], T | None]) -> Verdict[T]:
        verdict: Verdict[T] = Verdict(prompt)
        while verdict.value is None and verdict.attempts < ATTEMPTS:
            verdict.attempts += 1
            reply = self._complete(prompt, verdict)
            if reply is not None:
                verdict.replies.append(reply)
                verdict.value = parse(reply)
        if verdict.value is None:
            self.usage.missing += 1
        return verdict

    def _complete(self, prompt: list[ChatMessage], verdict: Verdict[Any]) -> str | None:
        messages = cast("list[ChatCompletionMessageParam]", [dict(m) for m in prompt])
        started = time.perf_counter()
        self.usage.requests += 1
        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=0.0
            )
        except openai.APIStatusError as exc:
            verdict.errors.append(f"HTTP {exc.status_code}: {exc.message}")
            return None
        except openai.OpenAIError as exc:
            verdict.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.usage.total_ms += (time.perf_counter() - started) * 1000
        if response.usage is not None:
            self.usage.prompt_tokens += response.usage.prompt_tokens
            self.usage.completion_tokens += response.usage.completion_tokens
        content = response.choices[0].message.content if response.choices else None
        if content is None:
            verdict.errors.append("the judge's reply has no text")
            return None
        return content
