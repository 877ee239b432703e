"""`/v1/responses`: create (whole or streamed), retrieve, delete, list input items.

Creation is counted and limited as chat is (`endpoint="responses"`); stored responses are read and
written through `server.responses.store`, scoped to the request's API key (`security.owner`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from server.api.deps import ServiceDep, validate
from server.api.event_stream import EventStreamResponse
from server.api.openai_routes import STREAM_HEADERS, counted
from server.errors import InvalidRequestError, NotFoundError
from server.protocol import ChatCompletionRequest
from server.protocol_responses import ResponsesRequest
from server.responses.background import EventLog
from server.responses.serving import ResponsesService
from server.responses.store import ResponseStore
from server.security import owner
from server.serving.context import RequestContext
from server.serving.service import Service

router = APIRouter(prefix="/v1")

MAX_LIST = 100


def _store(service: Service) -> ResponseStore:
    return ResponseStore(service.queue.commands, ttl_s=service.settings.responses_ttl_s,
                         max_bytes=service.settings.responses_max_bytes)


def _validate_chat(body: dict[str, Any]) -> ChatCompletionRequest:
    return validate(body, ChatCompletionRequest)


def _responses(request: Request, service: Service) -> ResponsesService:
    events = EventLog(service.queue.commands, service.queue.reader, service.settings.responses_ttl_s)
    return ResponsesService(service, _store(service), _validate_chat, request.app.state.responses_runs, events)


@router.post("/responses")
async def create_response(request: Request, service: ServiceDep) -> Response:
    responses = _responses(request, service)
    kid = owner.of(request.scope)

    async def serve(req: ResponsesRequest, context: RequestContext) -> Any:
        return await responses.create(req, kid, request.is_disconnected, context)

    return await counted(request, service, "responses", ResponsesRequest, serve)


async def _record(service: Service, request: Request, response_id: str) -> dict[str, Any]:
    record = await _store(service).load(owner.of(request.scope), response_id)
    if record is None:
        raise NotFoundError(f"No response found with id '{response_id}'.", param="response_id")
    return record


@router.get("/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request, service: ServiceDep,
                            stream: str | None = Query(default=None),
                            starting_after: str | None = Query(default=None)) -> Response:
    """The stored response; with `stream=true` a background response's events (after `starting_after`)."""
    record = await _record(service, request, response_id)
    if stream not in (None, "false", "true"):
        raise InvalidRequestError("Invalid value for 'stream': expected true or false.", param="stream")
    if stream != "true":
        if starting_after is not None:
            raise InvalidRequestError("'starting_after' is only allowed with 'stream=true'.", param="starting_after")
        return JSONResponse(record["response"])
    if not record["response"].get("background"):
        raise InvalidRequestError("Only background responses can be streamed again.", param="stream")
    after = -1
    if starting_after is not None:
        if not starting_after.isascii() or not starting_after.isdigit():
            raise InvalidRequestError("Invalid value for 'starting_after': a sequence number.",
                                      param="starting_after")
        after = int(starting_after)
    frames = _responses(request, service).resume(owner.of(request.scope), response_id, after)
    return EventStreamResponse(frames, headers=STREAM_HEADERS)


@router.post("/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request, service: ServiceDep) -> JSONResponse:
    response = await _responses(request, service).cancel(owner.of(request.scope), response_id)
    if response is None:
        raise NotFoundError(f"No response found with id '{response_id}'.", param="response_id")
    return JSONResponse(response)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request, service: ServiceDep) -> JSONResponse:
    if not await _store(service).delete(owner.of(request.scope), response_id):
        raise NotFoundError(f"No response found with id '{response_id}'.", param="response_id")
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/responses/{response_id}/input_items")
async def list_input_items(response_id: str, request: Request, service: ServiceDep,
                           limit: str = Query(default="20"), order: str = Query(default="desc"),
                           after: str | None = Query(default=None)) -> JSONResponse:
    if not limit.isascii() or not limit.isdigit() or not 1 <= int(limit) <= MAX_LIST:
        raise InvalidRequestError(f"Invalid value for 'limit': an integer from 1 to {MAX_LIST}.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("Invalid value for 'order': expected 'asc' or 'desc'.", param="order")
    record = await _record(service, request, response_id)
    return JSONResponse(page(record["items"], int(limit), order == "asc", after))


def page(items: list[dict[str, Any]], limit: int, ascending: bool, after: str | None) -> dict[str, Any]:
    """One page of a list, as the spec pages lists: `after` an item id, `has_more`, first and last ids."""
    ordered = items if ascending else list(reversed(items))
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise InvalidRequestError(f"No item with id '{after}' is in this list.", param="after")
        ordered = ordered[ids.index(after) + 1:]
    data = ordered[:limit]
    return {"object": "list", "data": data, "has_more": len(ordered) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
