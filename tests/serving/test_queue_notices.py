"""A queued stream's comments: positions while it waits, its wait once started, then its frames; a refusal
after the response began is an error frame and `[DONE]`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from server.errors import QueueTimeoutError
from server.serving.queue_notices import notices_then


async def _frames() -> AsyncIterator[bytes]:
    yield b'data: {"x": 1}\n\n'


def collect(outcome: BaseException | None) -> list[bytes]:
    async def run() -> list[bytes]:
        starting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        places = iter([(3, 900), (2, 600), (1, None)])

        async def position() -> tuple[int, int | None]:
            place = next(places)
            if place[0] == 1:  # the third look: a worker takes it
                if outcome is None:
                    starting.set_result(None)
                else:
                    starting.set_exception(outcome)
            return place

        return [frame async for frame in notices_then(starting, position, time.time(), _frames)]
    return asyncio.run(run())


def test_positions_then_the_wait_then_the_frames() -> None:
    out = collect(None)
    assert out[:3] == [b": queue position=3 wait_ms=900\n\n", b": queue position=2 wait_ms=600\n\n",
                       b": queue position=1\n\n"]
    assert out[3].startswith(b": queue wait_ms=") and out[4] == b'data: {"x": 1}\n\n'


def test_a_refusal_after_the_first_comment_is_an_error_frame_then_done() -> None:
    out = collect(QueueTimeoutError("waited too long", retry_after=1))
    error = json.loads(out[-1].split(b"\n\n")[0][len(b"data: "):])
    assert error["error"]["code"] == "queue_timeout"
    assert out[-1].endswith(b"data: [DONE]\n\n")
