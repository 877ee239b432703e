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

from server.registry import DEFAULT_KEY_ENV_PATTERN


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLM_", extra="ignore")

    redis_url: str | None = Field(
        default=None, description="Redis to queue through; unset means `serve` starts an embedded one."
    )
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

    cache_aware_dispatch: bool = Field(
        default=True, description="Send a request to the worker of its model that holds its prompt's prefix (a "
        "conversation's earlier turns) when that worker has a free slot, else to any (`server/queue/affinity.py`).")

    # stored responses (server/responses/store.py): Redis also holds the queue, so they are bounded in time
    # and size. A day covers an agent's working session and a redeploy (OpenAI keeps 30 days on disks of its
    # own); 256 MiB holds thousands of whole conversations of small-context models (one is at most a few
    # hundred KiB) and stays small beside a self-hosted Redis. At the cap new responses are not stored (507).
    responses_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long a stored response is kept.")
    responses_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024, description="What stored responses may hold in Redis, in all.")

    max_n: int = Field(default=8, ge=1, le=128, description="Largest `n` (choices) one request may ask for.")
    max_n_tokens: int = Field(default=16384, ge=1, description="Largest `n` x `max_tokens` of one request.")

    @field_validator("provider_key_env_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def model_dir_list(self) -> list[Path]:
        return [Path(p) for p in self.model_dirs.split(":") if p]

    @property
    def heartbeat_ttl_s(self) -> float:
        return max(3.0, self.heartbeat_s * 5)
