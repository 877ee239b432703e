"""Priority classes of the fair queue: integers from `LOWEST` to `HIGHEST` (higher is served first),
three of them named. A request's `priority` (an extension of the OpenAI, Responses and Anthropic
bodies) is read here; what its API key allows is `server.security.queue_policy`'s business."""

from __future__ import annotations

from typing import Any

from server.errors import InvalidRequestError

LOWEST = 0
HIGHEST = 9
NAMED = {"batch": 2, "default": 5, "interactive": 8}
DEFAULT = NAMED["default"]


def parse(value: Any, *, param: str = "priority") -> int | None:
    """A client's `priority` (an integer or a named class) as its class; None when not given."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in NAMED:
            return NAMED[value]
        raise InvalidRequestError(
            f"'{param}' must be an integer from {LOWEST} to {HIGHEST} or one of {', '.join(NAMED)}; "
            f"got {value[:40]!r}.", param=param)
    if isinstance(value, bool) or not isinstance(value, int) or not LOWEST <= value <= HIGHEST:
        raise InvalidRequestError(
            f"'{param}' must be an integer from {LOWEST} to {HIGHEST} or one of {', '.join(NAMED)}.", param=param)
    return value


def label(priority: int) -> str:
    """The class as a metric label and a `/v1/status` key (bounded: ten values)."""
    return str(priority)
