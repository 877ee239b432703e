"""Where every component's Redis clients come from: one URL, or a Sentinel-watched master.

Settings name one Redis (`SLM_REDIS_URL`, `redis://` or `rediss://`, with `SLM_REDIS_USERNAME` /
`SLM_REDIS_PASSWORD` for managed Redis and ACL users) or a set of sentinels
(`SLM_REDIS_SENTINELS=host:port,...` and `SLM_REDIS_SENTINEL_MASTER`). With sentinels a client asks
them for the master's address on every new connection, and a connection that finds a demoted master
(`READONLY`) is dropped as a connection error (redis-py's Sentinel-managed connections): the
gateway's and the worker's reconnect loops then land on the promoted replica by themselves.
`OUTAGE_ERRORS` are what those loops treat as "Redis is away for now".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.connection import parse_url
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

# A failover shows as one of these: the old master's sockets die or time out, or (a plain URL whose
# DNS name still points at a demoted master) writes come back READONLY.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (ConnectionError, TimeoutError, ReadOnlyError)

DEFAULT_SENTINEL_PORT = 26379


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (IPv6 as `[::1]:26379`; the port defaults to 26379) → pairs; a ValueError
    names the entry that is not one."""
    found: list[tuple[str, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"'{item}' is not host:port")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"'{item}' is not host:port")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ValueError(f"'{item}' has no valid port") from None
        if not 0 < port < 65536:
            raise ValueError(f"'{item}' has no valid port")
        found.append((host, port))
    return tuple(found)


@dataclass(frozen=True)
class RedisTarget:
    """One Redis to connect to, however it is reached (`Settings.redis_target()` builds it)."""

    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls_ca_file: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url or self.sentinels)

    def describe(self) -> str:
        """For logs: never a password."""
        if self.sentinels:
            return f"sentinels {','.join(f'{h}:{p}' for h, p in self.sentinels)} (master '{self.master}')"
        return self.url.split("@")[-1] if "@" in self.url else self.url

    def _credentials(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.tls_ca_file and self.url.startswith("rediss://"):
            options["ssl_ca_certs"] = self.tls_ca_file
        return options

    def _master_options(self) -> dict[str, Any]:
        """What the URL says of the master (db, TLS, credentials) when sentinels give its address."""
        parsed: dict[str, Any] = dict(parse_url(self.url)) if self.url else {}  # type: ignore[no-untyped-call]
        options: dict[str, Any] = {k: parsed[k] for k in ("db", "username", "password") if k in parsed}
        if self.url.startswith("rediss://"):
            options["ssl"] = True
        return {**options, **self._credentials()}

    def _sentinel_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Sentinels are asked with the same timeouts; their own credentials, never the master's."""
        sentinel: dict[str, Any] = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")
                                    if k in options}
        if self.sentinel_username:
            sentinel["username"] = self.sentinel_username
        if self.sentinel_password:
            sentinel["password"] = self.sentinel_password
        return sentinel

    def sync_client(self, **options: Any) -> redis.Redis:
        """A blocking client (the worker's threads). `options` are redis-py connection options."""
        if self.sentinels:
            merged = {**self._master_options(), **options}
            watch = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), sentinel_kwargs=self._sentinel_options(merged))
            client: redis.Redis = watch.master_for(  # type: ignore[no-untyped-call]
                self.master, redis_class=redis.Redis, **merged)
            return client
        if not self.url:
            raise ValueError("no Redis configured: set SLM_REDIS_URL or SLM_REDIS_SENTINELS")
        return redis.Redis.from_url(self.url, **{**self._credentials(), **options})

    def async_client(self, **options: Any) -> redis.asyncio.Redis:
        """An asyncio client (the gateway, the supervisor)."""
        if self.sentinels:
            merged = {**self._master_options(), **options}
            watch = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
                list(self.sentinels), sentinel_kwargs=self._sentinel_options(merged))
            client: redis.asyncio.Redis = watch.master_for(self.master, redis_class=redis.asyncio.Redis, **merged)
            return client
        if not self.url:
            raise ValueError("no Redis configured: set SLM_REDIS_URL or SLM_REDIS_SENTINELS")
        return redis.asyncio.Redis.from_url(self.url, **{**self._credentials(), **options})
