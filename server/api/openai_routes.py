"""`/v1/chat/completions`, `/v1/completions`, `/v1/models`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.deps import ServiceDep, named_model, read_json, validate
from server.api.event_stream import EventStreamResponse
from server.errors import ModelNotFoundError, SlmError
from server.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from server.registry import AnyEntry, HostedModel, LocalModel, RouterModel
from server.security import owner, usage
from server.serving.context import RequestContext
from server.serving.service import Answer, Service
from server.serving.streaming import ClientGone
from server.serving.transcript import open_transcript

router = APIRouter(prefix="/v1")

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _respond(answer: Answer, _req: Any = None) -> Response:
    if answer.stream is not None:
        return EventStreamResponse(answer.stream, headers={**STREAM_HEADERS, **answer.headers})
    return JSONResponse(answer.body, headers=answer.headers)


async def counted(request: Request, service: ServiceDep, endpoint: str, model: type[Any],
                  serve: Callable[[Any, RequestContext], Awaitable[Answer]], *,
                  parse: Callable[[dict[str, Any], type[Any]], Any] = validate,
                  respond: Callable[[Answer, Any], Response] = _respond) -> Response:
    """Serve and count the request by final status; refusals (400s included) are counted too. The
    request's context (its key's token usage, its transcript) goes to the service explicitly. Another
    front door passes its own `parse` (wire body -> request) and `respond` (answer -> its wire shape)."""
    code = 500
    stream = False
    label: tuple[str, str] | None = None
    try:
        data = await read_json(request)
        hint = named_model(data)
        found = service.registry.resolve(hint) if hint else None
        if found is not None:  # only registry names become label values, never arbitrary strings
            label = (found[0], found[1].backend)
        req = parse(data, model)
        stream = bool(getattr(req, "stream", False))
        transcript = None
        if service.settings.log_prompts:
            dumped = req.model_dump(include={"messages", "prompt", "input"}, exclude_none=True)
            transcript = open_transcript(req.model, dumped)
        context = RequestContext(usage=usage.of(request.scope), transcript=transcript,
                                 key=owner.of(request.scope), queue_notices=endpoint in ("chat", "completions"))
        response = respond(await serve(req, context), req)
        code = response.status_code
        return response
    except SlmError as exc:
        code = exc.status
        raise
    except ClientGone:
        code = 499
        return Response(status_code=499)
    finally:
        if label is not None:
            service.metrics.requests.labels(*label, endpoint, str(stream).lower(), str(code)).inc()


@router.post("/chat/completions")
async def chat_completions(request: Request, service: ServiceDep) -> Response:
    return await counted(request, service, "chat", ChatCompletionRequest,
                          lambda req, context: service.chat(req, request.is_disconnected, context))


@router.post("/completions")
async def completions(request: Request, service: ServiceDep) -> Response:
    return await counted(request, service, "completions", CompletionRequest,
                          lambda req, context: service.completion(req, request.is_disconnected, context))


@router.post("/embeddings")
async def embeddings(request: Request, service: ServiceDep) -> Response:
    return await counted(request, service, "embeddings", EmbeddingRequest,
                          service.embeddings)


def _model_card(name: str, created: int, entry: AnyEntry, service: Service) -> dict[str, Any]:
    """`owned_by` says who answers: `slm-server` (local), the provider (hosted), `slm-server-router`.
    A local model's card carries the extension `x_slm_residency` (OpenAI clients ignore unknown
    fields): its residency state and memory, as `/v1/status` shows them."""
    if isinstance(entry, HostedModel):
        owner = entry.litellm_model.split("/")[0]
    elif isinstance(entry, RouterModel):
        owner = "slm-server-router"
    else:
        owner = "slm-server"
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": owner}
    if isinstance(entry, LocalModel):
        canonical = service.registry.resolve(name)
        found = service.presence.residency.get(canonical[0] if canonical else name)
        card["x_slm_residency"] = found.public() if found is not None else {
            "state": "ready" if service.presence.counts.get(name, 0) > 0 else "unloaded", "load": entry.load,
            "pinned": entry.pinned}
    return card


@router.get("/models")
async def list_models(service: ServiceDep) -> dict[str, Any]:
    created = service.created
    data = []
    for name, entry in service.registry.models.items():
        data.append(_model_card(name, created, entry, service))
        data.extend(_model_card(alias, created, entry, service) for alias in entry.aliases)
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, service: ServiceDep) -> dict[str, Any]:
    found = service.registry.resolve(model_id)
    if found is None:
        raise ModelNotFoundError(model_id)
    return _model_card(model_id, service.created, found[1], service)
