"""A worker's published prefixes follow what its slots hold: a slot's new request replaces its old prefixes."""

from __future__ import annotations

import time

from server.queue import affinity, keys
from server.queue.messages import Job
from server.worker.prefixes import SlotPrefixes

DOC = "A ledger of tides and ships, week after week. " * 12


def job(name: str) -> Job:
    now = time.time()
    return Job(id=name, model="m", kind="chat", enqueued_at=now, deadline=now + 1,
               messages=[{"role": "system", "content": f"{name}: {DOC}"}, {"role": "user", "content": "Hi"}])


SHORT = Job(id="s", model="m", kind="chat", enqueued_at=0, deadline=1, messages=[{"role": "user", "content": "Hi"}])


def published(commands: list[tuple[object, ...]]) -> set[object]:
    assert commands[0] == ("DEL", keys.worker_prefixes("w1"))
    added = [words for words in commands if words[0] == "SADD"]
    assert all(words[1] == keys.worker_prefixes("w1") for words in added)
    return set(added[0][2:]) if added else set()


def digests(name: str) -> set[str]:
    return {p.digest for p in affinity.fingerprints(job(name))}


def test_each_slot_publishes_its_request_and_a_new_one_replaces_it() -> None:
    prefixes = SlotPrefixes("w1", ttl_s=5)
    assert published(prefixes.admitted(0, job("wren"))) == digests("wren")
    assert published(prefixes.admitted(1, job("alder"))) == digests("wren") | digests("alder")
    assert published(prefixes.admitted(0, job("heron"))) == digests("alder") | digests("heron")
    assert published(prefixes.admitted(1, SHORT)) == digests("heron")
    assert published(prefixes.admitted(0, SHORT)) == set()


def test_a_cache_moved_aside_is_published_where_it_went() -> None:
    """The engine moved slot 0's cache into slot 2 (out of a new prompt's way): slot 2's old request is gone,
    slot 0's is still held, and slot 0 now holds the new one."""
    prefixes = SlotPrefixes("w1", ttl_s=5)
    prefixes.admitted(0, job("wren"))
    prefixes.admitted(2, job("alder"))
    prefixes.moved(0, 2)
    assert published(prefixes.admitted(0, job("heron"))) == digests("wren") | digests("heron")
    prefixes.moved(5, 2)  # a slot with nothing published (the engine's own) moved over slot 2's
    assert published(prefixes.admitted(0, job("heron"))) == digests("heron")


def kept(commands: list[tuple[object, ...]]) -> object:
    (hset,) = [words for words in commands if words[0] == "HSET"]
    assert hset[1:3] == (keys.worker_info("w1"), "kept")
    assert ("EXPIRE", keys.worker_info("w1"), 5) in commands  # gone with the heartbeat when the worker is
    return hset[3]


def test_how_many_slots_keep_a_conversation_is_published_with_them() -> None:
    prefixes = SlotPrefixes("w1", ttl_s=5)
    assert kept(prefixes.admitted(0, job("wren"))) == 1
    assert kept(prefixes.admitted(1, job("alder"))) == 2
    assert kept(prefixes.admitted(1, SHORT)) == 1  # a prompt too short to find again keeps nothing worth steering for
    prefixes.moved(0, 3)
    assert kept(prefixes.admitted(0, SHORT)) == 1  # wren's, moved aside, is still kept
