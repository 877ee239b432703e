"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from server.api.errors import from_validation
from server.errors import InvalidRequestError
from server.json_checks import check_body, check_decodable
from server.serving.service import Service

M = TypeVar("M", bound=BaseModel)


async def get_service(request: Request) -> Service:  # async: a plain `def` would run on a thread pool
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def read_json(request: Request) -> Any:
    """The body as JSON, or an OpenAI-style 400 saying why it is not a JSON object."""
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")  # JSON on the wire is UTF-8 (RFC 8259); a leading BOM is tolerated
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.", code="invalid_json") from None
    try:
        data: Any = json.loads(text) if text else None
    except ValueError:
        raise InvalidRequestError("The request body is not valid JSON.", code="invalid_json") from None
    except RecursionError:
        check_decodable(text)  # names the parameter nested too deeply
        raise InvalidRequestError("The request body is nested too deeply.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_json")
    check_body(data, text)
    return data


def named_model(data: dict[str, Any]) -> str | None:
    """The `model` a body names, if any; for labels and routing before full validation."""
    model = data.get("model")
    return model if isinstance(model, str) else None


def validate(data: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(list(exc.errors())) from None

