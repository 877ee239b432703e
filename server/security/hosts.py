"""Which `Host` headers the gateway serves: the defence against DNS rebinding.

A web page at `http://evil.example` whose name the attacker re-points at 127.0.0.1 may call the
gateway "same-origin" and read its answers; its requests still say `Host: evil.example`. So:

- with no API keys (an open server) only these are served: `localhost`, the bind host
  (`SLM_HOST`, when it is a name) and any IP literal (`127.0.0.1:8000`, `[::1]`, a pod IP). An IP
  literal never comes from a DNS name, so it cannot be a rebinding; a page elsewhere that targets
  one directly is cross-origin, and the browser neither lets it read the answer nor send a JSON
  body without a preflight this server does not grant (see the Content-Type rule in `middleware`);
- with API keys any host is served: the key is what protects, and a page cannot read it;
- `SLM_ALLOWED_HOSTS` (comma-separated names, `*.example.com` for subdomains, `*` for any)
  replaces the names of the default; IP literals stay allowed.

Ports are ignored; names compare case-insensitively, without a trailing dot. A request without a
`Host` (HTTP/1.0) is served: browsers always send one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from server.settings import Settings

LOCAL_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # ".example.com" for a "*.example.com" entry

    @classmethod
    def from_settings(cls, settings: Settings, *, keys_configured: bool) -> HostPolicy | None:
        """The policy to enforce; None when any host is served."""
        entries = [e.strip().lower().rstrip(".") for e in settings.allowed_hosts.split(",") if e.strip()]
        if not entries:
            if keys_configured:
                return None
            entries = [*LOCAL_NAMES, settings.host.lower().rstrip(".")]
        if "*" in entries:
            return None
        suffixes = tuple(e[1:] for e in entries if e.startswith("*."))
        return cls(frozenset(e for e in entries if not e.startswith("*.")), suffixes)

    def allows(self, values: list[bytes]) -> bool:
        """Whether a request with these `Host` header values is served."""
        if not values:
            return True
        if len(values) > 1:
            return False
        name = hostname(values[0].decode("latin-1"))
        if name is None:
            return False
        if _is_ip(name):
            return True
        return name in self.names or name.endswith(self.suffixes)

    def describe(self) -> str:
        names = sorted(n for n in self.names if not _is_ip(n))
        return ", ".join([*names, *("*" + s for s in self.suffixes), "IP addresses"])


def hostname(value: str) -> str | None:
    """The host of a `Host` header value (no port, lower case), None if it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return inside if _is_ip(inside) else None
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".")
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
