"""Run the evaluation set through the server, one streamed chat completion per item and model.

Each request is timed twice: by the server (the `timings` object on the chunk that carries the
finish_reason: queue, prompt evaluation, generation) and by this client (time to the first content
token, time to the end of the stream). When the server sends no `timings` (a foreign
OpenAI-compatible server), the client's clock stands in: prompt evaluation ~ TTFT, generation =
total - TTFT, and the result says `timing_source: "client"`.

A multi-turn item is asked turn by turn, the model's own earlier answers fed back as assistant
messages; each turn is one request and one result (`turn` 1, 2...). An item graded only by the judge
has `score` None until the judge has seen it.

Before measuring a model, one untimed warm-up request loads it; a model whose warm-up fails is
skipped with the reason, so an embedding-only or broken entry does not stall the whole run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import openai
from openai.types.chat import ChatCompletionMessageParam

from server.compare.errors import ServerError, UsageError
from server.compare.evalset import ChatMessage, EvalItem
from server.compare.scoring import score_answer

Progress = Callable[[str], None]
TimingSource = Literal["server", "client"]
GIVE_UP_AFTER = 5  # consecutive failed requests that abandon a model (server gone, model broken)
WARMUP_MAX_TOKENS = 4
WARMUP_MESSAGES: tuple[ChatMessage, ...] = ({"role": "user", "content": "Say OK."},)


@dataclass
class RequestResult:
    model: str
    item_id: str
    repeat: int
    scoring: str
    lang: str | None
    answer: str = ""
    score: float | None = 0.0  # rule-based, 0..1; None for an item that only a judge grades
    turn: int = 1
    category: str | None = None
    judge_score: float | None = None  # 1..10 from the judge, None if not judged or no verdict
    judgement: dict[str, Any] | None = None  # the judge's prompt, replies and parsed verdict
    cost: float | None = None  # in the price's currency (USD), None when the model has no price
    error: str | None = None
    finish_reason: str | None = None
    served_by: str | None = None
    timing_source: TimingSource | None = None
    queue_ms: float | None = None
    prompt_ms: float | None = None
    predicted_ms: float | None = None
    total_ms: float | None = None
    ttft_ms: float | None = None
    client_ttft_ms: float | None = None
    client_total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelRun:
    model: str
    results: list[RequestResult] = field(default_factory=list)
    skipped: str | None = None


@dataclass(frozen=True)
class RunConfig:
    max_tokens: int = 128
    temperature: float = 0.0
    repeats: int = 1
    warmup: int = 1


def make_client(url: str, api_key: str, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=1)


def list_models(client: openai.OpenAI) -> list[str]:
    """The ids of the chat models the server lists (entries marked as embedding models left out)."""
    try:
        page = client.models.list()
    except openai.AuthenticationError as exc:
        raise ServerError(f"the server refused the API key ({exc.status_code}); give --api-key") from None
    except openai.APIStatusError as exc:
        raise ServerError(f"GET {client.base_url}models failed: HTTP {exc.status_code}") from None
    except openai.APIConnectionError as exc:
        raise ServerError(f"cannot reach the server at {client.base_url}: {_cause(exc)}") from None
    return [m.id for m in page.data if _is_chat_model(m.to_dict())]


def _is_chat_model(entry: Mapping[str, Any]) -> bool:
    for key in ("type", "task", "mode", "kind"):
        value = entry.get(key)
        if isinstance(value, str) and "embed" in value.lower():
            return False
    capabilities = entry.get("capabilities")
    if isinstance(capabilities, list) and capabilities:
        return any(str(c).lower() in ("chat", "completion", "completions", "generate") for c in capabilities)
    return True


def choose_models(available: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    if not wanted:
        if not available:
            raise ServerError("the server lists no chat model")
        return list(available)
    unknown = [m for m in wanted if m not in available]
    if unknown:
        listed = ", ".join(available) or "none"
        raise UsageError(f"unknown model {unknown[0]!r}; the server lists: {listed}")
    return list(dict.fromkeys(wanted))


class Runner:
    """Sequential: one request at a time, so that no request waits behind another of ours."""

    def __init__(self, client: openai.OpenAI, config: RunConfig, progress: Progress) -> None:
        self.client = client
        self.config = config
        self.progress = progress
        self.runs: list[ModelRun] = []  # filled as it goes, so an interrupted run can still report

    def run(self, models: Sequence[str], items: Sequence[EvalItem]) -> list[ModelRun]:
        for index, model in enumerate(models, start=1):
            run = ModelRun(model)
            self.runs.append(run)
            self._run_model(run, f"[{index}/{len(models)}] {model}", items)
        return self.runs

    def _run_model(self, run: ModelRun, label: str, items: Sequence[EvalItem]) -> None:
        for _ in range(self.config.warmup):
            self.progress(f"{label}: warm-up")
            warm_item = EvalItem("warm-up", WARMUP_MESSAGES, ("ok",), "contains")
            warm = self.request(run.model, warm_item, 0, max_tokens=WARMUP_MAX_TOKENS)
            if warm.error is not None:
                run.skipped = f"warm-up failed: {warm.error}"
                self.progress(f"{label}: skipped ({run.skipped})")
                return
        total = len(items) * self.config.repeats
        done = failures = 0
        for repeat in range(1, self.config.repeats + 1):
            for item in items:
                done += 1
                for result in self.conversation(run.model, item, repeat):
                    run.results.append(result)
                    self.progress(f"{label}: item {done}/{total} {_describe(item, result)}")
                    failures = failures + 1 if result.error is not None else 0
                if failures >= GIVE_UP_AFTER:
                    run.skipped = f"gave up after {failures} failures in a row: {run.results[-1].error}"
                    self.progress(f"{label}: skipped ({run.skipped})")
                    return

    def conversation(self, model: str, item: EvalItem, repeat: int) -> list[RequestResult]:
        """Each turn of the item, the model's earlier answers fed back; a failed turn ends it."""
        if not item.turns:
            return [self.request(model, item, repeat)]
        history = list(item.messages)
        results: list[RequestResult] = []
        for turn, text in enumerate(item.turns, start=1):
            history.append({"role": "user", "content": text})
            result = self.request(model, item, repeat, messages=tuple(history), turn=turn)
            results.append(result)
            if result.error is not None:
                break
            history.append({"role": "assistant", "content": result.answer})
        return results

    def request(
        self,
        model: str,
        item: EvalItem,
        repeat: int,
        max_tokens: int | None = None,
        *,
        messages: tuple[ChatMessage, ...] | None = None,
        turn: int = 1,
    ) -> RequestResult:
        result = RequestResult(model, item.id, repeat, item.scoring, item.lang, turn=turn, category=item.category)
        try:
            self._stream(result, messages or item.messages, max_tokens or self.config.max_tokens)
        except openai.APIStatusError as exc:
            result.error = f"HTTP {exc.status_code}: {_message(exc)}"
        except openai.APIConnectionError as exc:
            result.error = f"connection error: {_cause(exc)}"
        except openai.OpenAIError as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        if item.scoring == "judge":
            result.score = None
        elif result.error is None:
            result.score = score_answer(item, result.answer)
        return result

    def _stream(self, result: RequestResult, sent: tuple[ChatMessage, ...], max_tokens: int) -> None:
        messages = cast("list[ChatCompletionMessageParam]", [dict(m) for m in sent])
        started = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=result.model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.config.temperature,
            stream=True,
            stream_options={"include_usage": True},
        )
        result.served_by = raw.headers.get("x-slm-model")
        parts: list[str] = []
        first: float | None = None
        content_chunks = 0
        timings: Mapping[str, Any] | None = None
        with raw.parse() as stream:
            for chunk in stream:
                extra = chunk.model_extra or {}
                if isinstance(extra.get("timings"), Mapping):
                    timings = extra["timings"]
                if chunk.usage is not None:
                    result.prompt_tokens = chunk.usage.prompt_tokens
                    result.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        first = first if first is not None else time.perf_counter()
                        content_chunks += 1
                        parts.append(choice.delta.content)
                    if choice.finish_reason:
                        result.finish_reason = choice.finish_reason
        ended = time.perf_counter()
        result.answer = "".join(parts)
        result.client_total_ms = (ended - started) * 1000
        result.client_ttft_ms = ((first if first is not None else ended) - started) * 1000
        if result.completion_tokens is None:
            result.completion_tokens = content_chunks
        apply_timings(result, timings)


def apply_timings(result: RequestResult, timings: Mapping[str, Any] | None) -> None:
    """Fill the time figures from the server's `timings`, or from the client's clock without them."""
    prompt_ms = _float(timings, "prompt_ms")
    predicted_ms = _float(timings, "predicted_ms")
    predicted_n: int | None
    if prompt_ms is not None and predicted_ms is not None:
        result.timing_source = "server"
        result.queue_ms = _float(timings, "queue_ms")
        result.prompt_ms, result.predicted_ms = prompt_ms, predicted_ms
        result.total_ms = _float(timings, "total_ms")
        if result.total_ms is None:
            result.total_ms = prompt_ms + predicted_ms
        result.ttft_ms = _float(timings, "ttft_ms")
        prompt_n, predicted_n = _int(timings, "prompt_n"), _int(timings, "predicted_n")
        result.prompt_tokens = prompt_n if prompt_n is not None else result.prompt_tokens
        predicted_n = predicted_n if predicted_n is not None else result.completion_tokens
    else:
        assert result.client_total_ms is not None and result.client_ttft_ms is not None
        result.timing_source = "client"
        result.prompt_ms = result.ttft_ms = result.client_ttft_ms
        result.predicted_ms = result.client_total_ms - result.client_ttft_ms
        result.total_ms = result.client_total_ms
        predicted_n = result.completion_tokens
    if predicted_n and result.predicted_ms and result.predicted_ms > 0:
        result.tokens_per_s = predicted_n / (result.predicted_ms / 1000)


def _float(timings: Mapping[str, Any] | None, key: str) -> float | None:
    value = timings.get(key) if timings is not None else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _int(timings: Mapping[str, Any] | None, key: str) -> int | None:
    value = _float(timings, key)
    return int(value) if value is not None else None


def _describe(item: EvalItem, result: RequestResult) -> str:
    repeat = f" #{result.repeat}" if result.repeat > 1 else ""
    turn = f" turn {result.turn}/{item.turn_count}" if item.turns else ""
    if result.error is not None:
        return f"({item.id}{repeat}){turn} error: {result.error}"
    seconds = (result.total_ms or 0.0) / 1000
    score = "for the judge" if result.score is None else f"score {result.score:.2f}"
    return f"({item.id}{repeat}){turn} {seconds:.2f} s {score}"


def _message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    return exc.message


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(cause) if cause is not None and str(cause) else str(exc)
