"""API keys: loaded from `SLM_API_KEYS` / `SLM_API_KEYS_FILE`, kept only as sha256 digests.

A presented key is hashed and compared with every configured digest by `hmac.compare_digest`,
without stopping at a match, so the time taken says nothing about which key (if any) matched or
how much of it was right. Keys never reach logs, Redis or metrics: limits are keyed by
`key_id()`, a digest of the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("slm.security")

DIGEST_PREFIX = "sha256:"
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
SHORT_KEY_CHARS = 16


class ApiKeyConfigError(ValueError):
    """API keys that cannot be used; the message names the source and line, never the key."""


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def key_id(key_digest: bytes) -> str:
    """A stable, non-reversible name for one key, safe to use in Redis keys and logs."""
    return hashlib.sha256(b"slm-key-id\x00" + key_digest).hexdigest()[:24]


def mask(presented: str) -> str:
    """`sk-abcdef...7890` -> `sk-ab****7890`, as OpenAI shows it; short keys show less, down to nothing."""
    shown = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in presented)
    if len(shown) >= 24:
        return f"{shown[:5]}****{shown[-4:]}"
    edge = len(shown) // 6
    return f"{shown[:edge]}****{shown[-edge:]}" if edge else "****"


def _parse_entry(text: str, where: str) -> tuple[bytes, bool]:
    """One configured entry -> (digest, is_short_plain_key)."""
    if text.startswith(DIGEST_PREFIX):
        hexpart = text[len(DIGEST_PREFIX):]
        if not _HEX_DIGEST.match(hexpart):
            raise ApiKeyConfigError(f"{where}: a '{DIGEST_PREFIX}' entry needs 64 hex digits")
        return bytes.fromhex(hexpart), False
    if any(ch.isspace() for ch in text):
        raise ApiKeyConfigError(f"{where}: an API key may not contain whitespace")
    return digest(text.encode()), len(text) < SHORT_KEY_CHARS


class ApiKeys:
    """The configured keys as digests; empty means the API is open."""

    def __init__(self, digests: Iterable[bytes]) -> None:
        self._digests = tuple(dict.fromkeys(digests))  # de-duplicated, order kept

    def __len__(self) -> int:
        return len(self._digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    @classmethod
    def load(cls, keys: str = "", keys_file: Path | None = None) -> ApiKeys:
        found: list[bytes] = []
        short = 0
        for i, part in enumerate(keys.split(","), start=1):
            if part.strip():
                entry, is_short = _parse_entry(part.strip(), f"SLM_API_KEYS entry {i}")
                found.append(entry)
                short += is_short
        if keys_file is not None:
            try:
                lines = keys_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ApiKeyConfigError(f"{keys_file}: cannot read the API keys file ({type(exc).__name__})") from None
            for n, line in enumerate(lines, start=1):
                text = line.strip()
                if text and not text.startswith("#"):
                    entry, is_short = _parse_entry(text, f"{keys_file}:{n}")
                    found.append(entry)
                    short += is_short
            if not found:
                raise ApiKeyConfigError(f"{keys_file}: the API keys file holds no key")
        if short:
            log.warning("%d API key(s) are shorter than %d characters; use long random keys", short, SHORT_KEY_CHARS)
        return cls(found)

    def identify(self, presented: bytes) -> bytes | None:
        """The digest of the configured key equal to `presented`, or None; constant time over all keys."""
        candidate = digest(presented)
        matched: bytes | None = None
        for stored in self._digests:
            equal = hmac.compare_digest(stored, candidate)  # always run, for every key
            if equal and matched is None:
                matched = stored
        return matched
