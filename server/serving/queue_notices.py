"""A streamed request that is still queued is told where it stands, before its first chunk.

With the fair queue, an OpenAI stream (`/v1/chat/completions`, `/v1/completions`) whose request is
still waiting `SLM_QUEUE_NOTICE_AFTER_S` after admission starts its response then: every
`NOTICE_EVERY_S` one SSE comment,

    : queue position=3 wait_ms=1200

(position 1 is next; `wait_ms` is the position at the model's measured drain rate, left out before
one was measured), and once a worker started it `: queue wait_ms=M` (what it waited), then the chunks
as usual. SSE comments are ignored by every conforming client (the `openai` library included). A
refusal that comes after the response began (the prompt too long for the context, the queue deadline)
is an error frame then `[DONE]`, as any failure after the first byte; and no fallback is tried then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.exceptions import RedisError

from server.errors import SlmError
from server.serving.formatting import DONE_FRAME, LastChunk, sse
from server.serving.streaming import ClientGone

log = logging.getLogger("slm.serving")

NOTICE_EVERY_S = 0.5

Position = Callable[[], Awaitable[tuple[int, int | None]]]  # (position, estimated wait in ms or None)


def notice(position: int, wait_ms: int | None) -> bytes:
    if wait_ms is None:
        return f": queue position={position}\n\n".encode()
    return f": queue position={position} wait_ms={wait_ms}\n\n".encode()


async def notices_then(starting: asyncio.Future[None], position: Position, enqueued_at: float,
                       frames: Callable[[], AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The queue comments while `starting` (the wait for a worker) runs, then the stream's `frames`."""
    try:
        while not starting.done():
            try:
                place, wait_ms = await position()
            except (RedisError, OSError):
                place, wait_ms = 0, None
            if place > 0:
                yield notice(place, wait_ms)
            await asyncio.wait({starting}, timeout=NOTICE_EVERY_S)
        starting.result()
    except SlmError as exc:
        yield LastChunk(sse(exc.to_body()) + DONE_FRAME)
        return
    except ClientGone:  # noticed while queued: the job was cancelled, nobody is reading
        return
    finally:
        if not starting.done():  # the client left while queued: the wait's own clean-up cancels the job
            starting.cancel()
    yield f": queue wait_ms={int((time.time() - enqueued_at) * 1000)}\n\n".encode()
    async for frame in frames():
        yield frame
