"""Per-key queue settings: the file read (keys named as in the keys file), the ceiling refused by name,
a bad edit kept out, a good edit picked up without a restart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from server.errors import InvalidRequestError
from server.security.api_keys import digest, key_id
from server.security.owner import ANONYMOUS
from server.security.queue_policy import KeyPolicy, PolicyError, PolicySource, QueuePolicy

BASE = KeyPolicy(weight=1.0, priority=5, max_priority=5, max_queue_share=1.0)


def kid(key: str) -> str:
    return key_id(digest(key.encode()))


def test_keys_are_named_as_in_the_keys_file_and_inherit_the_default() -> None:
    hexed = hashlib.sha256(b"sk-hashed-key").hexdigest()
    policy = QueuePolicy.parse(f"""
default: {{weight: 2, max_queue_share: 0.5}}
keys:
  sk-plain-key: {{weight: 3, priority: batch}}
  "sha256:{hexed}": {{max_priority: interactive}}
  anonymous: {{priority: 1}}
""", "policy.yaml", BASE)
    assert policy.for_key(kid("sk-plain-key")) == KeyPolicy(3.0, 2, 5, 0.5)
    assert policy.for_key(kid("sk-hashed-key")) == KeyPolicy(2.0, 5, 8, 0.5)
    assert policy.for_key(ANONYMOUS).priority == 1
    assert policy.for_key(kid("sk-unlisted")) == KeyPolicy(2.0, 5, 5, 0.5)


def test_a_priority_above_the_ceiling_is_refused_naming_priority() -> None:
    policy = QueuePolicy(BASE)
    assert policy.priority_for("k", None) == 5
    assert policy.priority_for("k", 2) == 2
    with pytest.raises(InvalidRequestError) as refused:
        policy.priority_for("k", 8)
    assert refused.value.param == "priority" and "5" in refused.value.message


@pytest.mark.parametrize("text", ["keys: {sk-a: {weight: 0}}", "keys: {sk-a: {priority: urgent}}",
                                  "keys: {sk-a: {priority: 9, max_priority: 5}}", "other: 1", "keys: [1"])
def test_a_bad_file_is_refused_without_naming_a_key(text: str) -> None:
    with pytest.raises(PolicyError) as refused:
        QueuePolicy.parse(text, "policy.yaml", BASE)
    assert "policy.yaml" in str(refused.value) and "sk-a" not in str(refused.value)


def test_an_edit_is_picked_up_and_a_bad_one_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("keys: {sk-a: {weight: 2}}\n")
    source = PolicySource(BASE, path, interval_s=0)
    assert source.current().for_key(kid("sk-a")).weight == 2
    path.write_text("keys: {sk-a: {weight: 4}}\n")
    assert source.current().for_key(kid("sk-a")).weight == 4
    path.write_text("keys: {sk-a: {weight: -1}}\n")
    assert source.current().for_key(kid("sk-a")).weight == 4
