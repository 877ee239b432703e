"""litellm at the boundary: loaded offline and quiet, its failures translated into our errors.

`map_upstream_error` is the one translation, most specific first:

    litellm ContextWindowExceededError, 400 code=context_length_exceeded -> ContextLengthError 400
    litellm RateLimitError (429)                    -> RateLimitError 429 + the upstream Retry-After
    litellm Timeout, 408/504, our own deadline      -> UpstreamTimeoutError 504, not retried
    connection failures (incl. litellm's 500 with no HTTP answer behind it) -> UpstreamError 502, retryable
    401 / 403 (our key), 402, 404 (our config)      -> UpstreamError 502, not retried
    other 4xx (incl. litellm UnsupportedParamsError) -> InvalidRequestError 400, upstream message
    other 5xx                                       -> UpstreamError 502, retryable
    anything else                                   -> UpstreamError 502, its text not shown

A failure with no HTTP answer behind it (connection, timeout, an unexpected exception) or a 5xx also
says the upstream is down (`UpstreamFailure.upstream_down`, what `backends/health.py` counts); a 4xx,
429 included, is an answer: the upstream is reachable.

Every message is scrubbed before it becomes an error, a log line or a metric label (`scrub`): of
the provider key and of transformed copies of it (any 8 characters of it in a row, in any letter
case, forwards or reversed), and of anything shaped like a secret (a bearer token, `sk-...`, a run
of 20 or more letters and digits that mixes them like a key does).
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import importlib
import inspect
import logging
import math
import os
import re
import string
import time
import warnings
from types import ModuleType
from typing import NamedTuple

from server.errors import (
    ContextLengthError,
    InvalidRequestError,
    RateLimitError,
    SlmError,
    UpstreamError,
    UpstreamTimeoutError,
)

log = logging.getLogger("slm.hosted")

_OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True"}
_TOKEN = re.compile(r"(?i)\b(bearer\s+)[^\s,;\"']+|\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}")
# A run of key characters, kept or dropped by `_looks_secret`.
_RUN = re.compile(r"[A-Za-z0-9_\-+/=]{20,}")
# Copies of a key are found by its 8-character pieces: shorter runs match ordinary words too often.
KEY_PIECE = 8
_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)  # keeps every index in place
_REDACTED = "[redacted]"
_PREFIX = re.compile(r"^(?:\s*(?:litellm\.)?[A-Za-z]+(?:Error|Exception)\s*(?::|-)\s*)+")


@functools.cache
def load_litellm() -> ModuleType:
    """Import litellm offline and quiet (its import otherwise fetches a cost map from GitHub)."""
    for name, value in _OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    import litellm
    from litellm.types.utils import Delta, Message, ModelResponse, ModelResponseStream, TextCompletionResponse

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" prints on errors
    # litellm's response types finish building their pydantic schemas on first use, with a UserWarning
    # (a `ReadOnly` TypedDict item); where warnings are errors that warning would fail the first request.
    # Likewise the module every call imports lazily on its first use (a TypedDict of GitHub Copilot's
    # device login, with `ReadOnly` items): imported here, under the same filter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for response_type in (Message, Delta, ModelResponse, ModelResponseStream, TextCompletionResponse):
            response_type()
        with contextlib.suppress(ImportError):  # older litellm releases have no such module
            importlib.import_module("litellm.llms.github_copilot.per_user_auth")
    return litellm


def provider_of(litellm_model: str) -> str:
    return litellm_model.split("/", 1)[0] if "/" in litellm_model else "default"


def _copies(text: str, secret: str) -> list[tuple[int, int]]:
    """Spans of `text` that copy `KEY_PIECE` or more characters of `secret` in a row, in any letter case,
    forwards or reversed (the whole secret when it is shorter)."""
    piece = min(KEY_PIECE, len(secret))
    folded_secret = secret.translate(_LOWER)
    pieces = {s[i:i + piece] for s in (folded_secret, folded_secret[::-1]) for i in range(len(s) - piece + 1)}
    folded = text.translate(_LOWER)
    spans: list[tuple[int, int]] = []
    for i in range(len(folded) - piece + 1):
        if folded[i:i + piece] in pieces:
            if spans and spans[-1][1] >= i:
                spans[-1] = (spans[-1][0], i + piece)
            else:
                spans.append((i, i + piece))
    return spans


def _looks_secret(run: str) -> bool:
    """A run of 20+ key characters that is shaped like a key, not like a word or a model name: letters of
    both cases and digits, or (hex ids, lower-case keys) letters and digits over 32 characters; and not
    repetitive (at least 3 bits of entropy per character)."""
    alnum = [c for c in run if c.isalnum()]
    upper, lower, digit = (any(f(c) for c in alnum) for f in (str.isupper, str.islower, str.isdigit))
    if not (upper and lower and digit) and not (digit and (upper or lower) and len(alnum) >= 32):
        return False
    counts = [alnum.count(c) for c in set(alnum)]
    return -sum(n / len(alnum) * math.log2(n / len(alnum)) for n in counts) >= 3.0


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without the secrets, transformed copies of them, or anything else shaped like a secret."""
    for secret in secrets:
        if secret:
            for start, end in reversed(_copies(text, secret)):
                text = text[:start] + _REDACTED + text[end:]
    text = _TOKEN.sub(lambda m: (m.group(1) or "") + _REDACTED, text)
    return _RUN.sub(lambda m: _REDACTED if _looks_secret(m.group()) else m.group(), text)


class UpstreamFailure(NamedTuple):
    error: SlmError
    label: str  # the metric's `code`: an upstream HTTP status, "timeout", "connection", "truncated", "unknown"
    retryable: bool

    @property
    def upstream_down(self) -> bool:
        """Whether this failure counts against the upstream's health: no answer or a 5xx (never a 4xx)."""
        return self.label in ("connection", "timeout", "unknown") or (self.label.isdigit() and int(self.label) >= 500)


def _retry_after(exc: BaseException) -> float:
    for source in (getattr(exc, "litellm_response_headers", None), getattr(exc, "headers", None),
                   getattr(getattr(exc, "response", None), "headers", None)):
        if not source:
            continue
        headers = {str(k).lower(): str(v) for k, v in dict(source).items()}
        try:
            if "retry-after-ms" in headers:
                return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
            if "retry-after" in headers:
                value = headers["retry-after"]
                try:
                    return max(0.0, float(value))
                except ValueError:
                    when = email.utils.parsedate_to_datetime(value)
                    return max(0.0, when.timestamp() - time.time())
        except (ValueError, TypeError, OverflowError):
            continue
    return 1.0


def _upstream_message(exc: BaseException, secrets: tuple[str, ...]) -> str:
    body = getattr(exc, "body", None)
    text = body["message"] if isinstance(body, dict) and isinstance(body.get("message"), str) else None
    if text is None:
        text = _PREFIX.sub("", str(getattr(exc, "message", None) or exc))
    text = scrub(text, secrets).strip()
    return text[:500] + ("..." if len(text) > 500 else "")


def map_upstream_error(exc: BaseException, *, model: str, timeout: float, param: str,
                       secrets: tuple[str, ...] = ()) -> UpstreamFailure:
    """The one translation of a litellm (or transport) failure into our errors; most specific first."""
    if isinstance(exc, SlmError):
        return UpstreamFailure(exc, (exc.code or str(exc.status)).removeprefix("upstream_"), False)
    litellm = load_litellm()
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    body = getattr(exc, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(exc, litellm.ContextWindowExceededError) or (status == 400 and code == "context_length_exceeded"):
        return UpstreamFailure(ContextLengthError(_upstream_message(exc, secrets), param=param), "400", False)
    if isinstance(exc, litellm.RateLimitError) or status == 429:
        msg = f"The hosted model '{model}' is rate limited upstream: {_upstream_message(exc, secrets)}"
        return UpstreamFailure(RateLimitError(msg, retry_after=_retry_after(exc)), "429", False)
    if isinstance(exc, TimeoutError | litellm.Timeout) or status == 408:
        msg = f"The hosted model '{model}' did not answer within {timeout:g}s."
        return UpstreamFailure(UpstreamTimeoutError(msg, code="upstream_timeout"), "timeout", False)
    # litellm reports a refused connection as a 500 with no response headers: no HTTP answer came back
    no_answer = status is not None and status >= 500 and not getattr(exc, "litellm_response_headers", None)
    if isinstance(exc, litellm.APIConnectionError | OSError) or no_answer:
        msg = f"The hosted model '{model}' could not be reached."
        return UpstreamFailure(UpstreamError(msg, code="upstream_unreachable"), "connection", True)
    if status is None:
        log.warning("hosted model %s: unexpected %s from litellm", model, type(exc).__name__)
        msg = f"The hosted model '{model}' failed upstream."
        return UpstreamFailure(UpstreamError(msg, code="upstream_failed"), "unknown", False)
    if status in (401, 403):
        msg = f"The hosted model '{model}' refused this server's credentials (upstream {status})."
        return UpstreamFailure(UpstreamError(msg, code="upstream_auth_failed"), str(status), False)
    if status in (402, 404):
        msg = f"The hosted model '{model}' is misconfigured upstream (upstream {status})."
        return UpstreamFailure(UpstreamError(msg, code="upstream_misconfigured"), str(status), False)
    if 400 <= status < 500:
        upstream_param = body.get("param") if isinstance(body, dict) else None
        error = InvalidRequestError(_upstream_message(exc, secrets),
                                    param=upstream_param if isinstance(upstream_param, str) else None,
                                    code=code if isinstance(code, str) else None)
        return UpstreamFailure(error, str(status), False)
    msg = f"The hosted model '{model}' failed upstream (upstream {status})."
    return UpstreamFailure(UpstreamError(msg, code="upstream_failed"), str(status), status >= 500)


async def close_hosted_clients() -> None:
    """Close and forget the HTTP clients litellm cached for the running event loop (an app's lifespan
    calls it at shutdown, after its last request). Clients of other event loops (another app in the
    same process) are left alone; a forgotten client is never handed out again closed. Without litellm
    loaded there is nothing to close (and it is not imported for that)."""
    if not load_litellm.cache_info().currsize:
        return
    litellm = load_litellm()
    cache = litellm.in_memory_llm_clients_cache
    loop_key = getattr(cache, "update_cache_key_with_event_loop", None)
    if loop_key is None:  # a litellm that does not key its clients by event loop: close them all
        await litellm.close_litellm_async_clients()
        cache.flush_cache()
        return
    suffix = loop_key("")  # litellm's own suffix for this loop's keys
    for key in [k for k in list(cache.cache_dict) if isinstance(k, str) and k.endswith(suffix)]:
        client = cache.cache_dict.get(key)
        cache.delete_cache(key)
        await _close_client(client)


async def _close_client(client: object) -> None:
    closer = getattr(client, "aclose", None) or getattr(client, "close", None)
    if closer is None:
        return
    try:
        result = closer()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.debug("closing a hosted client failed", exc_info=True)
