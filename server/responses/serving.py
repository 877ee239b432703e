"""Serve `POST /v1/responses` through the one serving path (`Service.chat`), and keep its state.

The request is read into item resources (`items`), the stored conversation is put before them when
`previous_response_id` continues one, and the whole becomes one chat request (`translate`) that the
service plans, admits and serves exactly as a chat completion (fallbacks, routers, limits, metrics).
Its answer comes back as a Response object (`objects`) or the Responses event stream (`events`),
and is stored (`store`) before the client sees its end, so that any gateway can continue it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from server.errors import ContextLengthError, InvalidRequestError, SlmError, StorageFullError
from server.protocol import ChatCompletionRequest
from server.protocol_responses import ResponsesRequest
from server.responses import objects
from server.responses.background import FINAL_STATUSES, BackgroundRuns, EventLog
from server.responses.events import TERMINAL, EventWriter, frame, translated
from server.responses.items import new_id, read_input
from server.responses.store import ResponseStore
from server.responses.translate import chat_request, renamed
from server.serving.context import RequestContext
from server.serving.formatting import LastChunk
from server.serving.service import Answer, Service
from server.serving.streaming import ClientGone, IsDisconnected, shielded

log = logging.getLogger("slm.responses")

STORED_HEADER = "x-slm-response-stored"
FULL = ("Stored responses are at this server's cap (SLM_RESPONSES_MAX_BYTES); send 'store': false, or delete "
        "stored responses.")
ChatValidator = Callable[[dict[str, Any]], ChatCompletionRequest]


@dataclass
class Turn:
    """One request to answer: who asks, the conversation so far, the new input."""

    owner: str
    history: list[dict[str, Any]]
    new_items: list[dict[str, Any]]

    @property
    def items(self) -> list[dict[str, Any]]:
        return self.history + self.new_items


def dropped_oldest(items: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """`items` less their oldest turn (up to the next user message), or None when only one turn is left."""
    for i in range(1, len(items)):
        item = items[i]
        if item["type"] == "message" and item["role"] == "user":
            return items[i:]
    return None


class ResponsesService:
    def __init__(self, service: Service, store: ResponseStore, validate_chat: ChatValidator,
                 runs: BackgroundRuns, events: EventLog) -> None:
        self.service = service
        self.store = store
        self.validate_chat = validate_chat
        self.runs = runs
        self.events = events

    async def turn(self, req: ResponsesRequest, owner: str) -> Turn:
        history: list[dict[str, Any]] = []
        if req.previous_response_id is not None:
            record = await self.store.load(owner, req.previous_response_id)
            if record is None:
                raise InvalidRequestError(f"Previous response with id '{req.previous_response_id}' not found.",
                                          param="previous_response_id", code="previous_response_not_found")
            if record["response"]["status"] in ("queued", "in_progress"):
                raise InvalidRequestError(f"Previous response with id '{req.previous_response_id}' is still in "
                                          "progress; continue it once it has finished.",
                                          param="previous_response_id")
            history = [*record["items"], *record["response"]["output"]]
        return Turn(owner, history, read_input(req.input))

    async def create(self, req: ResponsesRequest, owner: str, is_disconnected: IsDisconnected,
                     context: RequestContext) -> Answer:
        req.refuse_unsupported()
        if req.background and not req.stores:
            raise InvalidRequestError("A background response must be stored: 'store' cannot be false.",
                                      param="background")
        turn = await self.turn(req, owner)
        if req.stores and not await self.store.has_room(turn.items):
            raise StorageFullError(FULL, param="store")
        if req.background:
            return await self._background(req, turn)
        answer = await self._chat(req, turn.items, is_disconnected, context)
        local = answer.headers.get("x-slm-backend") == "local"
        response = objects.skeleton(req, new_id("resp"), answer.headers.get("x-slm-model", req.model),
                                    objects.echoed_tools(req))
        if answer.stream is None:
            objects.from_chat(response, answer.body or {}, local)
            stored = await self._save(req, turn, response)
            return Answer({**answer.headers, STORED_HEADER: str(stored).lower()}, body=response)
        writer = EventWriter(response, local)

        async def before_end(final: dict[str, Any]) -> None:
            await self._save(req, turn, final)

        return Answer(answer.headers, stream=_encoded(translated(answer.stream, writer, before_end)))

    async def _chat(self, req: ResponsesRequest, items: list[dict[str, Any]], is_disconnected: IsDisconnected,
                    context: RequestContext) -> Answer:
        """The chat answer; with `truncation: auto` the oldest turns are dropped until the prompt fits."""
        while True:
            try:
                chat = self.validate_chat(chat_request(req, items))
                return await self.service.chat(chat, is_disconnected, context)
            except ContextLengthError as exc:
                shorter = dropped_oldest(items) if req.truncation == "auto" else None
                if shorter is None:
                    raise renamed(exc) from None
                log.info("truncation auto: %d of %d items dropped", len(items) - len(shorter), len(items))
                items = shorter
            except SlmError as exc:
                raise renamed(exc) from None

    # -- background ------------------------------------------------------------------------------
    async def _background(self, req: ResponsesRequest, turn: Turn) -> Answer:
        """Store the response `queued`, start it detached, answer it (or follow its events) at once."""
        model, _entry = self.service.resolve(req.model)  # an unknown model is refused now, not later
        response = objects.skeleton(req, new_id("resp"), model, objects.echoed_tools(req), status="queued")
        writer = EventWriter(response, local=False)
        created = writer.created()
        if not await self.store.save(turn.owner, response, turn.items):
            raise StorageFullError(FULL, param="store")
        await self.events.append(turn.owner, response["id"], [created])
        self.runs.start(self._run(req, turn, writer))
        headers = {"x-slm-model": model}
        if req.stream:
            return Answer(headers, stream=self.resume(turn.owner, response["id"], -1))
        return Answer(headers, body=dict(created["response"]))

    async def _run(self, req: ResponsesRequest, turn: Turn, writer: EventWriter) -> None:
        response = writer.response
        rid = response["id"]
        cancelled = self.events.cancelled(rid)
        try:
            answer = await self._chat(req.model_copy(update={"stream": True}), turn.items, cancelled,
                                      RequestContext(key=turn.owner))
            writer.local = answer.headers.get("x-slm-backend") == "local"
            response["model"] = answer.headers.get("x-slm-model", response["model"])
            opening = [writer.in_progress()]
            await self.store.save(turn.owner, response, turn.items)
            assert answer.stream is not None
            batches = translated(answer.stream, writer, opening=opening)
            try:
                async for batch in batches:
                    await self.events.append(turn.owner, rid, batch)
                    if await cancelled():
                        break
            finally:
                await batches.aclose()  # closing the chat stream early cancels the job on its worker
        except ClientGone:  # cancelled while queued
            pass
        except SlmError as exc:
            await self.events.append(turn.owner, rid, writer.fail(exc.to_body()["error"], exc.status))
        except asyncio.CancelledError:
            objects.failed(response, "server_error", "The gateway running this response stopped.")
            await shielded(self._save_run(turn, response))
            raise
        except Exception:  # a detached task has no caller to raise to: logged once, the response failed
            log.exception("background response %s failed", rid)
            objects.failed(response, "server_error", "The server had an error while processing your request.")
        if response["status"] not in FINAL_STATUSES:
            response["status"] = "cancelled"
        await self._save_run(turn, response)

    async def _save_run(self, turn: Turn, response: dict[str, Any]) -> None:
        if not await self.store.save(turn.owner, response, turn.items):
            log.warning("background response %s: its final state was not stored (cap reached)", response["id"])

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any] | None:
        """Cancel a background response; its state once the running gateway stopped it (None: unknown)."""
        record = await self.store.load(owner, response_id)
        if record is None:
            return None
        response: dict[str, Any] = record["response"]
        if not response.get("background"):
            raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
        if response["status"] in FINAL_STATUSES:
            return response
        await self.events.cancel(response_id)
        for _ in range(100):  # the running gateway looks every CANCEL_POLL_S
            await asyncio.sleep(0.05)
            record = await self.store.load(owner, response_id)
            if record is None or record["response"]["status"] in FINAL_STATUSES:
                break
        return record["response"] if record is not None else response

    async def resume(self, owner: str, response_id: str, starting_after: int) -> AsyncIterator[bytes]:
        """A background response's events after `starting_after`, as SSE frames, to the end."""

        async def finished() -> bool:
            record = await self.store.load(owner, response_id)
            return record is None or record["response"]["status"] in FINAL_STATUSES

        async for data in _encoded(self.events.follow(owner, response_id, starting_after, finished)):
            yield data

    async def _save(self, req: ResponsesRequest, turn: Turn, response: dict[str, Any]) -> bool:
        """Store the response (`store` true), saying whether it was; a full store leaves `store` false."""
        if not req.stores:
            return False
        stored = await self.store.save(turn.owner, response, turn.items)
        if not stored:
            log.warning("response %s not stored: stored responses are at their cap", response["id"])
            response["store"] = False
        return stored


async def _encoded(batches: AsyncIterator[list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    try:
        async for batch in batches:
            data = b"".join(frame(event) for event in batch)
            yield LastChunk(data) if batch and batch[-1]["type"] in TERMINAL else data
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()
