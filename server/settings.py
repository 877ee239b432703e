"""Process settings, read from `SLM_*` environment variables.

Model settings live in the registry (`model_registry.yaml`); these are the knobs of one process.
Settings are built by the command line or by tests, never at import time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server.redis_connect import RedisTarget, parse_sentinels
from server.registry import DEFAULT_KEY_ENV_PATTERN
from server.residency.budget import budget_bytes, parse_size


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLM_", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis to queue through; unset means `serve` starts an embedded one."
    )
    # Redis high availability and managed Redis (server/redis_connect.py)
    redis_sentinels: str = Field(
        default="", description="Comma-separated host:port of Redis Sentinels; when set, clients connect to the "
        "master they name (SLM_REDIS_SENTINEL_MASTER) and follow its failovers. SLM_REDIS_URL then only gives "
        "the scheme (`rediss://` = TLS), db and credentials.")
    redis_sentinel_master: str = Field(default="mymaster", min_length=1,
                                       description="The master's name the sentinels monitor.")
    redis_sentinel_username: str = Field(default="", description="ACL user towards the sentinels (if they ask).")
    redis_sentinel_password: SecretStr = Field(default=SecretStr(""), description="Password of the sentinels.")
    redis_username: str = Field(default="", description="ACL user towards Redis (managed Redis).")
    redis_password: SecretStr = Field(default=SecretStr(""), description="Redis password (rather than in the URL).")
    redis_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle that signs a `rediss://` server's certificate (else the system's).")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    registry: Path = Path("model_registry.yaml")
    model_dirs: str = Field(
        default="", description="Colon-separated directories GGUF files may live in (besides packages)."
    )
    worker_port: int = Field(default=0, ge=0, le=65535, description="Worker health/metrics port; 0 = off.")
    queue_timeout_s: float = Field(default=120.0, gt=0, description="How long a request may wait queued.")
    lease_s: float = Field(default=10.0, gt=0, description="A worker's hold on a request before redelivery.")
    max_deliveries: int = Field(default=3, ge=1, description="Deliveries before a request is dead-lettered.")
    dlq_maxlen: int = Field(default=1000, ge=1, description="Entries kept per model's dead-letter stream (approx).")
    dlq_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="A dead-letter stream expires this long "
                           "after its last entry.")
    stall_timeout_s: float = Field(default=30.0, gt=0, description="Silence from a worker that ends a stream.")
    heartbeat_s: float = Field(default=1.0, gt=0, description="How often a worker says it is alive.")
    redis_timeout_s: float = Field(default=1.0, gt=0, description="Connect/command timeout towards Redis.")
    reload_interval_s: float = Field(default=1.0, ge=0, description="Registry file polling; 0 = no hot reload.")
    compare_results: Path | None = Field(
        default=None, description="A `slm-server compare` results.json the page at `/` shows beside live latency."
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_prompts: bool = False
    # security (server/security): API keys, body size, per-key limits
    api_keys: SecretStr = Field(
        default=SecretStr(""), description="Comma-separated API keys; when set (or a keys file), /v1/* needs one."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file of API keys, one a line, or their digests as `sha256:<hex>`."
    )
    protect_metrics: bool = Field(default=False, description="Require an API key on /metrics too.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest request body; larger -> 413.")
    rate_limit_rpm: int = Field(default=0, ge=0, description="Requests per minute per API key (in Redis); 0 = off.")
    rate_limit_tpm: int = Field(
        default=0, ge=0, description="Tokens (prompt + completion) per minute per API key (in Redis); 0 = off."
    )
    rate_limit_concurrency: int = Field(default=0, ge=0, description="Concurrent requests per API key; 0 = off.")
    rate_limit_window_s: float = Field(
        default=60.0, gt=0, le=86400,
        description="Length of the sliding window of the RPM and TPM limits (both are per this many seconds).",
    )
    # browsers and slow clients (server/security/hosts.py, server/http_protocol.py)
    allowed_hosts: str = Field(
        default="", description="Comma-separated Host names served (`*` = any); empty: localhost and the bind "
        "host when no API keys are set, any host when keys are. IP literals are always served.")
    header_timeout_s: float = Field(default=10.0, gt=0, description="A request's headers must arrive within this.")
    body_timeout_s: float = Field(default=30.0, gt=0, description="A request's body must arrive within this.")
    max_connections_per_client: int = Field(
        default=64, ge=0, description="Open connections per client address without API keys; 0 = no cap.")
    docs: bool = Field(default=False, description="Serve /docs and /openapi.json (Swagger UI, sandboxed by CSP).")
    provider_key_env_pattern: str = Field(
        default=DEFAULT_KEY_ENV_PATTERN,
        description="Regex every hosted entry's `api_key_env` must fully match (`SLM_*` names never do).",
    )

    trace_stages: bool = Field(
        default=False, description="Time every local request's path to its first token, stage by stage (gateway, "
        "queue, worker intake, tokenize, batch, prefill, back): the slm_ttft_stage_seconds histogram and one "
        "`slm.trace` log line per request. Off by default: it is for finding where latency goes.")

    trace_steps: bool = Field(
        default=False, description="Time every decode step of a worker, phase by phase (the step itself, writing its "
        "events in wall and in the decode thread's own CPU time, the rest of the loop up to the next step): the "
        "slm_worker_step_seconds histogram on the worker's /metrics (`server/worker/step_timer.py`). Off by "
        "default: it is for finding where the time per token goes.")

    cache_aware_dispatch: bool = Field(
        default=True, description="Send a request to the worker of its model that holds its prompt's prefix (a "
        "conversation's earlier turns) when that worker has a free slot, else to any (`server/queue/affinity.py`).")

    local_events: bool = Field(
        default=True, description="Take the events of workers on this host (same network namespace) straight "
        "from them on a local socket, Redis keeping the record, rather than through Redis's Pub/Sub alone "
        "(`server/queue/local_feed.py`). Workers elsewhere publish on Redis either way.")

    # stored responses (server/responses/store.py): Redis also holds the queue, so they are bounded in time
    # and size. A day covers an agent's working session and a redeploy (OpenAI keeps 30 days on disks of its
    # own); 256 MiB holds thousands of whole conversations of small-context models (one is at most a few
    # hundred KiB) and stays small beside a self-hosted Redis. At the cap new responses are not stored (507).
    responses_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long a stored response is kept.")
    responses_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="What stored responses may hold in Redis, in all.")

    # residency (server/residency): what `serve` may keep loaded at once
    memory_budget: str = Field(
        default="", description="Memory the local models' workers of `serve` may use together, e.g. `8GiB`, "
        "`512MiB` or bytes; empty: 75% of the machine's memory. A model that would not fit makes room by "
        "stopping the least recently used idle, unpinned models first.")

    # the fair queue (server/queue/fair.py, server/security/queue_policy.py)
    queue_policy: Literal["fair", "fifo"] = Field(
        default="fair", description="`fair`: priority classes, then deficit round robin between API keys by "
        "weight; `fifo`: first come, first served per model (one stream, as before).")
    queue_policy_file: Path | None = Field(
        default=None, description="A YAML file of per-key queue settings (weight, priority, max_priority, "
        "max_queue_share), re-read when it changes.")
    queue_starvation_s: float = Field(
        default=10.0, gt=0, description="A lower priority class's request waiting this long is served next "
        "(at most one such request in four).")
    queue_notice_after_s: float = Field(
        default=0.5, ge=0, description="A streamed OpenAI request still queued after this long starts its "
        "response with `: queue position=N wait_ms=M` comments.")
    priority_default: int = Field(default=5, ge=0, le=9, description="A key's default priority class.")
    priority_max: int = Field(default=5, ge=0, le=9, description="The highest priority a key may ask for "
                              "unless its policy entry says otherwise; above it: 400 naming `priority`.")
    queue_key_share: float = Field(
        default=1.0, gt=0, le=1, description="The part of a model's `max_queue` one key may fill with waiting "
        "requests (per-key `max_queue_share` overrides it).")

    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` (choices) one request may ask for.")
    max_n_tokens: int = Field(default=16384, ge=1, description="Largest `n` x `max_tokens` of one request.")

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_list(cls, value: str) -> str:
        parse_sentinels(value)  # a ValueError names the entry that is not host:port
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("memory_budget")
    @classmethod
    def _size(cls, value: str) -> str:
        if value.strip():
            parse_size(value)
        return value

    def memory_budget_bytes(self) -> int:
        return budget_bytes(self.memory_budget)

    @field_validator("provider_key_env_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def redis_target(self) -> RedisTarget:
        """The Redis every component connects to (`redis_connect`: one URL, or sentinels)."""
        return RedisTarget(
            url=self.redis_url or "",
            sentinels=parse_sentinels(self.redis_sentinels),
            master=self.redis_sentinel_master,
            username=self.redis_username or None,
            password=self.redis_password.get_secret_value() or None,
            sentinel_username=self.redis_sentinel_username or None,
            sentinel_password=self.redis_sentinel_password.get_secret_value() or None,
            tls_ca_file=str(self.redis_tls_ca_file) if self.redis_tls_ca_file else None,
        )

    @property
    def redis_configured(self) -> bool:
        return bool(self.redis_url or self.redis_sentinels.strip())

    def model_dir_list(self) -> list[Path]:
        return [Path(p) for p in self.model_dirs.split(":") if p]

    @property
    def heartbeat_ttl_s(self) -> float:
        return max(3.0, self.heartbeat_s * 5)
