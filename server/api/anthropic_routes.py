"""`/v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API on the same models.

The body is parsed into Anthropic's wire models (`server.anthropic.protocol`), translated into the
one internal chat request (`server.anthropic.translate`) and served by `Service.chat`, like
`/v1/chat/completions`; the answer is written back in Anthropic's shapes (`server.anthropic.answer`,
`server.anthropic.events`). Errors on these paths are Anthropic's envelope (`server.envelopes`).
`anthropic-version` and `anthropic-beta` are accepted and not read.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from server.anthropic.answer import whole_message
from server.anthropic.events import anthropic_stream
from server.anthropic.protocol import CountTokensRequest, MessagesRequest
from server.anthropic.translate import to_chat_request
from server.api.deps import ServiceDep, read_json
from server.api.errors import from_validation
from server.api.event_stream import EventStreamResponse
from server.api.openai_routes import STREAM_HEADERS, counted
from server.protocol import ChatCompletionRequest
from server.serving.service import Answer

router = APIRouter(prefix="/v1")
M = TypeVar("M", bound=BaseModel)


def parse(data: dict[str, Any], model: type[M]) -> M:
    """`data` as `model`, or a 400 naming the most specific field that is wrong (for a block of the
    wrong type: the block, not the string the content could also have been)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: -len(error.get("loc", ())))
        raise from_validation(errors) from None


def _as_chat(data: dict[str, Any], _model: type[Any]) -> ChatCompletionRequest:
    return to_chat_request(parse(data, MessagesRequest))


def _anthropic_response(answer: Answer, chat: ChatCompletionRequest) -> Response:
    served = answer.headers.get("x-slm-model", chat.model)
    if answer.stream is not None:
        return EventStreamResponse(anthropic_stream(answer.stream, served, answer.result),
                                   headers={**STREAM_HEADERS, **answer.headers})
    result = answer.result() if answer.result is not None else None
    return JSONResponse(whole_message(answer.body or {}, result, served), headers=answer.headers)


@router.post("/messages")
async def messages(request: Request, service: ServiceDep) -> Response:
    """Serve one message, counted in `slm_requests_total{endpoint="messages"}` by its final status."""
    return await counted(request, service, "messages", MessagesRequest,
                         lambda chat, context: service.chat(chat, request.is_disconnected, context),
                         parse=_as_chat, respond=_anthropic_response)


@router.post("/messages/count_tokens")
async def count_tokens(request: Request, service: ServiceDep) -> JSONResponse:
    req = parse(await read_json(request), CountTokensRequest)
    return JSONResponse({"input_tokens": await service.count_tokens(to_chat_request(req))})
