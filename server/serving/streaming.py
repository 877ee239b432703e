"""A started generation as the client gets it: one whole OpenAI body, or SSE frames.

Role chunks first, text as it comes (chunks from events that arrived in one read go out in one
write), the finish reasons held to the end, the usage chunk when asked, `[DONE]` last; after the
first byte a failure becomes one error frame then `[DONE]`. A client that leaves cancels the
generation; its clean-up runs after the response (`Closing`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import anyio

from server.backends.base import Delta, Generation, as_delta
from server.errors import SlmError
from server.serving.assembly import Assembled
from server.serving.formatting import DONE_FRAME, LastChunk, Shape, sse
from server.serving.tool_calls import ToolCallFilter, settle
from server.serving.tracking import Tracker

log = logging.getLogger("slm.serving")

DISCONNECT_POLL_S = 0.5  # how often a queued request's client is checked (`server.worker.intake` relies on it)

IsDisconnected = Callable[[], Coroutine[Any, Any, bool]]


class ClientGone(Exception):
    """The client disconnected; nothing is sent back."""


async def shielded(coro: Coroutine[Any, Any, None]) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await coro
        except Exception:
            log.debug("cleanup failed", exc_info=True)


class Closing:
    """Generations being closed after their response, not before its last byte: a clean-up (a Redis
    round trip) is not the client's to wait for."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def later(self, gen: Generation) -> None:
        task = asyncio.get_running_loop().create_task(shielded(gen.close()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        """Let the clean-ups still running finish (at shutdown, before the Redis clients close)."""
        if self._tasks:
            await asyncio.gather(*self._tasks)


async def start_tracked(gen: Generation, track: Tracker, is_disconnected: IsDisconnected) -> None:
    """Wait for the backend to accept (a worker started, or the first upstream chunk); a refusal or a
    client that left is recorded, and the generation is cancelled and closed."""
    try:
        await _start(gen, is_disconnected)
    except BaseException as exc:
        if isinstance(exc, SlmError):
            track.failed(exc)
        else:
            track.disconnected()
        await shielded(gen.cancel())
        await shielded(gen.close())
        raise
    track.started(gen.result)

async def _start(gen: Generation, is_disconnected: IsDisconnected) -> None:
    start = asyncio.ensure_future(gen.start())
    while True:
        done, _ = await asyncio.wait({start}, timeout=DISCONNECT_POLL_S)
        if done:
            start.result()
            return
        if await is_disconnected():
            start.cancel()
            raise ClientGone

async def whole(gen: Generation, shape: Shape, track: Tracker, is_disconnected: IsDisconnected, closing: Closing,
                with_logprobs: bool, with_tools: bool = False) -> dict[str, Any]:
    parts = Assembled()
    watcher = asyncio.create_task(_watch_disconnect(gen, track, is_disconnected))
    try:
        async for item in gen.deltas():
            delta = as_delta(item)
            if delta.carries():
                track.token(delta.text or delta.reasoning or delta.refusal)
            parts.add(delta)
        if track.gone:
            raise ClientGone
        track.finished(gen.result, gen.redelivered)
        joined = parts.joined()
        calls = parts.calls()
        if with_tools:
            for index, text in joined.items():
                reason = gen.result.finish_reasons.get(index, gen.result.finish_reason)
                content, found, reason = settle(text, reason)
                joined[index] = content or ""
                if found:
                    calls[index] = found
                gen.result.finish_reasons[index] = reason
                if len(joined) == 1:
                    gen.result.finish_reason = reason
        return shape.whole(joined, gen.result, {"timings": track.timings(gen.result)},
                           logprobs=parts.logprobs if with_logprobs else None, calls=calls,
                           fields=parts.extras())
    except SlmError as exc:
        track.failed(exc)
        raise
    finally:
        watcher.cancel()
        closing.later(gen)

async def _watch_disconnect(gen: Generation, track: Tracker, is_disconnected: IsDisconnected) -> None:
    """A non-streaming client that hangs up cancels its generation on the worker."""
    while not await is_disconnected():
        await asyncio.sleep(0.25)
    track.disconnected()
    await gen.cancel()

async def stream(
    gen: Generation, shape: Shape, track: Tracker, closing: Closing, include_usage: bool, n: int = 1,
    with_tools: bool = False,
) -> AsyncIterator[bytes]:
    complete = False
    out: list[bytes] = []  # chunks whose events came in one read go out in one write
    held_finishes: list[Delta] = []
    filters = {i: ToolCallFilter() for i in range(n)} if with_tools else {}
    try:
        for index in range(n):
            yield shape.chunk(role=True, text="", index=index) if shape.endpoint == "chat" else b": ok\n\n"
        async for item in gen.deltas():
            delta = as_delta(item)
            if delta.finish_reason is not None:
                held_finishes.append(delta)
            elif delta.carries():
                track.token(delta.text or delta.reasoning or delta.refusal)
                text = filters[delta.index].feed(delta.text) if filters else delta.text
                more = bool(delta.reasoning or delta.refusal or delta.tool_calls)
                if delta.index == 0 and text and not (delta.logprobs or more):
                    out.append(shape.text_chunk(text))  # most tokens: the frame made without a dict
                elif text or delta.logprobs or more:
                    out.append(shape.chunk(text=text if text or not more else None, index=delta.index,
                                           logprobs=delta.logprobs, tool_calls=delta.tool_calls,
                                           reasoning=delta.reasoning, refusal=delta.refusal))
            if out and not gen.buffered():
                yield b"".join(out)
                out.clear()
        track.finished(gen.result, gen.redelivered)
        timings = {"timings": track.timings(gen.result)}
        if not held_finishes:
            held_finishes.append(Delta(0, "", None, gen.result.finish_reason))
        for fin in held_finishes:
            if fin.index in filters:
                rest, calls = filters[fin.index].finish()
                if rest:
                    out.append(shape.chunk(text=rest, index=fin.index))
                if calls:
                    out.append(shape.chunk(index=fin.index, tool_calls=calls))
                    fin.finish_reason = "length" if fin.finish_reason == "length" else "tool_calls"
        for i, fin in enumerate(held_finishes):
            last = i == len(held_finishes) - 1
            out.append(shape.chunk(finish_reason=fin.finish_reason, index=fin.index,
                                   extra=timings if last else None))
        if include_usage:
            out.append(shape.usage_chunk(gen.result))
        complete = True
        yield LastChunk(b"".join([*out, DONE_FRAME]))  # the end of the answer in one write
    except SlmError as exc:
        track.failed(exc)
        complete = True
        yield LastChunk(b"".join([*out, sse(exc.to_body()), DONE_FRAME]))
    finally:
        if not complete:
            track.disconnected()
            await shielded(gen.cancel())
        closing.later(gen)


async def to_the_end(gen: Generation) -> None:
    """Run a job that streams no text (embeddings, a token count) to its end; its result holds the answer."""
    try:
        await gen.start()
        async for _ in gen.deltas():
            pass
    finally:
        await shielded(gen.close())
