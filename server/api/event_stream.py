"""`EventStreamResponse`: Server-Sent Events whose last chunk and the end of the body share one write."""

from __future__ import annotations

from starlette.responses import StreamingResponse
from starlette.types import Send

from server.serving.formatting import LastChunk


class EventStreamResponse(StreamingResponse):
    """A `StreamingResponse` of bytes that ends at the first `LastChunk` it is given: that chunk is
    sent as the end of the body (one write, one wake-up of the client, instead of two)."""

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            last = isinstance(chunk, LastChunk)
            body = chunk.encode(self.charset) if isinstance(chunk, str) else bytes(chunk)
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            if last:
                aclose = getattr(self.body_iterator, "aclose", None)
                if aclose is not None:  # run the generator's clean-up now, not when it is collected
                    await aclose()
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
