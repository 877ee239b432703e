"""One error hierarchy for the whole server, each class knowing its HTTP face.

    SlmError                       500 server_error
    ├── InvalidRequestError        400 invalid_request_error      (param names the field)
    │   ├── ContextLengthError     400 code=context_length_exceeded
    │   └── SchemaLimitError       400 code=schema_too_complex (a JSON schema past the grammar's bounds)
    ├── AuthenticationError        401
    ├── ModelNotFoundError         404 code=model_not_found
    ├── NotFoundError              404 (a stored response unknown, expired or another key's)
    ├── RequestTimeoutError        408 code=request_timeout (headers or body too slow; the connection closes)
    ├── RequestTooLargeError       413
    ├── OverloadedError            429 + Retry-After (queue full)
    ├── RateLimitError             429 + Retry-After (per-key limits)
    ├── UpstreamError              502 (hosted provider failed)
    ├── ServiceUnavailableError    503 + Retry-After (Redis or workers down, queue timeout)
    │   └── UpstreamUnavailableError  503 code=upstream_unavailable (a hosted model's circuit is open)
    ├── UpstreamTimeoutError       504
    ├── GenerationError            500 (worker failed, request dead-lettered)
    └── StorageFullError           507 code=storage_full (stored responses at their cap; not retried)

`server.api.errors` installs the handlers that render these as the OpenAI error envelope; the
same `to_body()` renders the error frame of a stream that already started.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SlmError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    metric_type: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after
        self.extra_headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        out = dict(self.extra_headers)
        if self.retry_after is not None:
            out["Retry-After"] = str(max(1, round(self.retry_after)))
        return out


class InvalidRequestError(SlmError):
    status = 400
    type = "invalid_request_error"
    metric_type = "validation"


class ContextLengthError(InvalidRequestError):
    default_code = "context_length_exceeded"


class SchemaLimitError(InvalidRequestError):
    default_code = "schema_too_complex"


class AuthenticationError(SlmError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    metric_type = "auth"


class ModelNotFoundError(SlmError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"
    metric_type = "validation"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class RequestTooLargeError(SlmError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"
    metric_type = "validation"


class RequestTimeoutError(SlmError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"
    metric_type = "timeout"


class OverloadedError(SlmError):
    status = 429
    type = "server_overloaded"
    default_code = "queue_full"
    metric_type = "overloaded"


class RateLimitError(SlmError):
    status = 429
    type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"
    metric_type = "rate_limited"


class UpstreamError(SlmError):
    status = 502
    type = "upstream_error"
    metric_type = "upstream"


class ServiceUnavailableError(SlmError):
    status = 503
    type = "service_unavailable"
    metric_type = "unavailable"


class QueueTimeoutError(ServiceUnavailableError):
    default_code = "queue_timeout"
    metric_type = "timeout"


class UpstreamUnavailableError(ServiceUnavailableError):
    """A hosted model whose upstream failed repeatedly: refused at once, no call made (`backends/health.py`)."""

    default_code = "upstream_unavailable"


class UpstreamTimeoutError(SlmError):
    status = 504
    type = "upstream_timeout"
    metric_type = "timeout"


class GenerationError(SlmError):
    status = 500
    type = "server_error"
    default_code = "generation_failed"
    metric_type = "worker_lost"


class NotFoundError(SlmError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    metric_type = "validation"


class StorageFullError(SlmError):
    """Nothing more can be stored; retrying soon would not help (the client is told not to)."""

    status = 507
    type = "server_error"
    default_code = "storage_full"
    metric_type = "overloaded"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, headers={"x-should-retry": "false"})


class RegistryError(Exception):
    """A registry file that cannot be used; the message names the file, the entry and the field."""
