"""The one place an error becomes a status, a body and headers: the envelope of the API whose path
the request named. `/v1/messages` and below answer in Anthropic's envelope (`server.anthropic.errors`),
everything else in OpenAI's (`SlmError.to_body`). Used by the route handlers (`server.api.errors`)
and by the security middleware, which refuses before any route runs."""

from __future__ import annotations

from typing import Any

from server.anthropic.errors import envelope, face, type_for_status
from server.errors import SlmError

ANTHROPIC_PATH = "/v1/messages"


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/")


def render(exc: SlmError, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    if is_anthropic(path):
        status, kind = face(exc)
        return status, envelope(kind, exc.message), exc.headers()
    return exc.status, exc.to_body(), exc.headers()


def render_http(status: int, message: str, path: str) -> dict[str, Any]:
    """The body of a plain HTTP error (no such route, method not allowed)."""
    if is_anthropic(path):
        return envelope(type_for_status(status), message)
    kind = "not_found" if status == 404 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
