"""Anthropic's error envelope: `{"type": "error", "error": {"type": ..., "message": ...}}`.

    400 invalid_request_error     401 authentication_error     403 permission_error
    404 not_found_error           408 / 504 timeout_error      413 request_too_large
    429 rate_limit_error (per-key limits, with retry-after)
    529 overloaded_error (a full queue, a busy hosted model: `OverloadedError`, with retry-after)
    503 overloaded_error (no worker, the queue unreachable, shutting down)
    other 5xx api_error
"""

from __future__ import annotations

from typing import Any

from server.errors import OverloadedError, SlmError

OVERLOADED_STATUS = 529
TYPES_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
                   OVERLOADED_STATUS: "overloaded_error"}
# an OpenAI error frame's `type` (a stream that already started) -> Anthropic's
TYPES_BY_OPENAI_TYPE = {"invalid_request_error": "invalid_request_error", "rate_limit_exceeded": "rate_limit_error",
                        "server_overloaded": "overloaded_error", "service_unavailable": "overloaded_error",
                        "upstream_timeout": "timeout_error"}


def face(exc: SlmError) -> tuple[int, str]:
    """The status and Anthropic error type `exc` is answered with."""
    if isinstance(exc, OverloadedError):
        return OVERLOADED_STATUS, "overloaded_error"
    return exc.status, type_for_status(exc.status)


def type_for_status(status: int) -> str:
    return TYPES_BY_STATUS.get(status, "api_error" if status >= 500 else "invalid_request_error")


def type_for_openai(openai_type: Any) -> str:
    return TYPES_BY_OPENAI_TYPE.get(str(openai_type), "api_error")


def envelope(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}
