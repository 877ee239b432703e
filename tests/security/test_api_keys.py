"""Loading, checking and masking API keys (no I/O but a temporary keys file)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from server.security.api_keys import ApiKeyConfigError, ApiKeys, key_id, mask

KEY_A = "sk-a-" + "1" * 32
KEY_B = "sk-b-" + "2" * 32


def test_keys_from_env_and_file_plain_and_digest(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# comment\n\n  {KEY_B}  \nsha256:{hashlib.sha256(b'sk-c-hashed-key-0000').hexdigest().upper()}\n")
    keys = ApiKeys.load(f" {KEY_A} ,,", path)
    assert len(keys) == 3
    for key in (KEY_A, KEY_B, "sk-c-hashed-key-0000"):
        assert keys.identify(key.encode()) == hashlib.sha256(key.encode()).digest()
    for wrong in ("", KEY_A.upper(), KEY_A[:-1], KEY_A + " ", "sha256:" + hashlib.sha256(KEY_A.encode()).hexdigest()):
        assert keys.identify(wrong.encode()) is None


def test_no_keys_means_open() -> None:
    keys = ApiKeys.load("", None)
    assert not keys and keys.identify(b"anything") is None


@pytest.mark.parametrize(("text", "match"), [
    ("sha256:abc", "64 hex"),
    ("sha256:" + "g" * 64, "64 hex"),
    ("two words", "whitespace"),
])
def test_bad_entries_name_the_line_not_the_key(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{KEY_A}\n{text}\n")
    with pytest.raises(ApiKeyConfigError, match=match) as info:
        ApiKeys.load("", path)
    assert f"{path}:2" in str(info.value)
    assert text not in str(info.value) and KEY_A not in str(info.value)


def test_an_unreadable_or_empty_keys_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyConfigError, match="cannot read"):
        ApiKeys.load("", tmp_path / "missing")
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ApiKeyConfigError, match="no key"):
        ApiKeys.load("", tmp_path / "empty")


def test_every_key_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys.load(",".join(f"sk-key-{i:02d}-{'x' * 24}" for i in range(8)))
    calls: list[int] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert keys.identify(f"sk-key-00-{'x' * 24}".encode()) is not None  # the first key
    assert len(calls) == 8
    calls.clear()
    assert keys.identify(b"wrong") is None
    assert len(calls) == 8


def test_mask_shows_little_of_a_key() -> None:
    assert mask("sk-ab" + "0" * 30 + "cdef") == "sk-ab****cdef"
    assert mask("short-key-12") == "sh****12"
    assert mask("abc") == "****"
    assert mask("sk-\x00\n" + "z" * 30) == "sk-??****zzzz"


def test_key_id_is_stable_and_not_the_digest() -> None:
    digest = hashlib.sha256(KEY_A.encode()).digest()
    assert key_id(digest) == key_id(digest)
    assert key_id(digest) not in digest.hex() and KEY_A not in key_id(digest)
