"""The handlers that turn errors into HTTP answers, in the envelope of the API the path names
(`server.envelopes`: OpenAI's, or Anthropic's under `/v1/messages`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.envelopes import render, render_http
from server.errors import InvalidRequestError, SlmError

log = logging.getLogger("slm.api")


def error_response(exc: SlmError, path: str = "") -> JSONResponse:
    status, body, headers = render(exc, path)
    return JSONResponse(body, status_code=status, headers=headers)


_UNION_BRANCHES = {"str", "int", "float", "bool", "list", "dict", "none"}


def from_validation(errors: list[Any]) -> InvalidRequestError:
    """The first pydantic error as a 400 naming the parameter (`messages.0.role`, say)."""
    if not errors:
        return InvalidRequestError("The request body is invalid.")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
    # drop union-branch names pydantic inserts into locations (e.g. 'str', 'list[TextPart]')
    loc = [p for p in loc if p not in _UNION_BRANCHES and "[" not in p]
    param = ".".join(loc) or None
    if err.get("type") == "json_invalid":
        return InvalidRequestError("The request body is not valid JSON.", param=None, code="invalid_json")
    message = err.get("msg", "Invalid value")
    if err.get("type") == "missing":
        return InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    return InvalidRequestError(f"Invalid value for '{param}': {message}.", param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SlmError)
    async def _slm(request: Request, exc: SlmError) -> JSONResponse:
        return error_response(exc, request.scope["path"])

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(from_validation(list(exc.errors())), request.scope["path"])

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        return error_response(from_validation(list(exc.errors())), request.scope["path"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = render_http(exc.status_code, str(exc.detail), request.scope["path"])
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s (request %s)", request.url.path,
                  getattr(request.state, "request_id", "-"), exc_info=exc)
        return error_response(SlmError("The server had an error while processing your request."),
                              request.scope["path"])
