"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from server.api.errors import from_validation
from server.errors import InvalidRequestError
from server.serving.service import Service

M = TypeVar("M", bound=BaseModel)


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def peek_model(request: Request) -> str | None:
    """The `model` a body names, if it is readable; for labels and routing before full validation."""
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) else None


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data: Any = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError("The request body is not valid JSON.", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(list(exc.errors())) from None
