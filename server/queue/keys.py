"""Every Redis key slm-server uses, in one place: the queue's and the per-API-key limits'."""

from __future__ import annotations

PREFIX = "slm"
GROUP = "workers"


def request_stream(model: str) -> str:
    """Requests for one model; consumer group `workers`."""
    return f"{PREFIX}:req:{model}"


def worker_stream(model: str, worker_id: str) -> str:
    """Requests for one worker of a model: those whose prompt prefix it holds (`queue/affinity.py`); same group."""
    return f"{request_stream(model)}:{worker_id}"


def dispatch_workers(model: str) -> str:
    """Set: the ids of the model's workers that read an own stream (live or not: their streams are reaped)."""
    return f"{PREFIX}:dispatch:{model}"


def worker_prefixes(worker_id: str) -> str:
    """Set: the prompt-prefix fingerprints one worker's slots hold (`queue/affinity.py`); expires."""
    return f"{PREFIX}:prefixes:{worker_id}"


def response_stream(request_id: str) -> str:
    """Events of one request (started, delta, done, error); expires."""
    return f"{PREFIX}:resp:{request_id}"


def event_feed(gateway_id: str) -> str:
    """Pub/Sub channel of one gateway: its requests' events, published by the workers beside the `XADD`."""
    return f"{PREFIX}:feed:{gateway_id}"


def fair_queue(model: str) -> str:
    """The prefix of one model's fair queue (`server/queue/fair.py`): its waiting jobs per priority class
    and API key, the round-robin state, the counters and the doorbell all live under it."""
    return f"{PREFIX}:fq:{model}:"


def cancel_flag(request_id: str) -> str:
    """Set by the gateway when the client has gone."""
    return f"{PREFIX}:cancel:{request_id}"


def dead_letters(model: str) -> str:
    """Requests dead-lettered (crashed a worker, or failed on every delivery); capped, expires."""
    return f"{PREFIX}:dlq:{model}"


def job_admitted(request_id: str) -> str:
    """The entry id a request was queued as: a retried admission (its reply lost) queues nothing twice."""
    return f"{PREFIX}:admitted:{request_id}"


def job_running(request_id: str) -> str:
    """The attempt whose worker began the request's own work (template, tokens, grammar); expires."""
    return f"{PREFIX}:running:{request_id}"


def job_passed(request_id: str) -> str:
    """The attempt that got through the request's own work on its worker (set by that worker's next
    admission, while this one's `started` may still wait to be written); expires."""
    return f"{PREFIX}:passed:{request_id}"


def worker_heartbeats(model: str) -> str:
    """Sorted set: worker id -> last heartbeat (unix seconds)."""
    return f"{PREFIX}:workers:{model}"


def worker_info(worker_id: str) -> str:
    """Hash with one worker's slots, busy slots and model file; expires."""
    return f"{PREFIX}:worker:{worker_id}"


# Per-API-key limits (server/security/rate_limits.py, windows.py). `kid` is `api_keys.key_id()`, never the key.
def request_window(kid: str) -> str:
    """Sorted set: the requests of one key admitted within the rate window, scored by Redis time (µs)."""
    return f"{PREFIX}:ratelimit:rpm:{kid}"


def token_window(kid: str) -> str:
    """Sorted set: the token charges (`<nonce>:<tokens>`) of one key within the window, by Redis time (µs)."""
    return f"{PREFIX}:ratelimit:tpm:{kid}"


def token_window_total(kid: str) -> str:
    """The sum of `token_window(kid)`'s charges; expires with it."""
    return f"{PREFIX}:ratelimit:tpm-total:{kid}"


def concurrent_requests(kid: str) -> str:
    """Requests of one key being served now."""
    return f"{PREFIX}:ratelimit:concurrent:{kid}"


# Stored responses (server/responses/store.py). `owner` is the API key's id (`api_keys.key_id()`), never the key.
def stored_response(owner: str, response_id: str) -> str:
    """One stored response and the input items of its conversation (JSON); expires."""
    return f"{PREFIX}:responses:{owner}:{response_id}"


def stored_responses_expiry() -> str:
    """Sorted set: each stored response's key, scored by when it expires (unix ms)."""
    return f"{PREFIX}:responses:expiry"


def stored_responses_sizes() -> str:
    """Hash: each stored response's key -> its size in bytes."""
    return f"{PREFIX}:responses:sizes"


def stored_responses_total() -> str:
    """The bytes all stored responses hold (what the memory cap bounds)."""
    return f"{PREFIX}:responses:bytes"


def response_events(owner: str, response_id: str) -> str:
    """Stream: the events of a background response, in order (a reconnecting client resumes them); expires."""
    return f"{PREFIX}:responses:events:{owner}:{response_id}"


def response_cancel(response_id: str) -> str:
    """Set when a background response is cancelled; the gateway running it stops its generation."""
    return f"{PREFIX}:responses:cancel:{response_id}"


# Residency (server/residency): written by the supervisor of `serve`, read by every gateway.
def residency() -> str:
    """Hash: model -> its residency as JSON (state, memory estimated and measured, last use, loads,
    evictions); plus `_budget` -> the budget and what is in use. Expires unless rewritten."""
    return f"{PREFIX}:residency"


def residency_wanted(model: str) -> str:
    """Set (expiring) by a gateway whose router passed over the model while it was unloaded: load it."""
    return f"{PREFIX}:residency:wanted:{model}"
