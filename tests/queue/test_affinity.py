"""Cache-aware dispatch's parts on a real Redis: prompt-prefix fingerprints, the admission script's choice of
stream, and the taking of entries left waiting in another worker's own stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis

from server.errors import OverloadedError
from server.queue import affinity, keys
from server.queue.client import QueueClient
from server.queue.messages import Job

DOC = "The harbour of Wren keeps a ledger of every ship. " * 20  # ~1,000 characters


def chat_job(model: str, messages: list[dict[str, Any]], **extra: Any) -> Job:
    now = time.time()
    return Job(id=uuid.uuid4().hex, model=model, kind="chat", messages=messages, enqueued_at=now,
               deadline=now + 60, **extra)


def conversation(doc: str = DOC) -> list[dict[str, Any]]:
    return [{"role": "system", "content": doc}, {"role": "user", "content": "How many ships?"}]


def follow_up(first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*first, {"role": "assistant", "content": "Twelve."}, {"role": "user", "content": "And boats?"}]


# -- fingerprints -------------------------------------------------------------------------------------------
def test_a_follow_up_turn_carries_every_prefix_of_the_turn_before() -> None:
    first = affinity.fingerprints(chat_job("m", conversation()))
    second = affinity.fingerprints(chat_job("m", follow_up(conversation())))
    assert [p.digest for p in second[:len(first)]] == [p.digest for p in first]
    assert len(second) == len(first) + 2
    assert [p.chars for p in second] == sorted(p.chars for p in second)


def test_another_document_shares_no_prefix() -> None:
    one = {p.digest for p in affinity.fingerprints(chat_job("m", conversation()))}
    other = {p.digest for p in affinity.fingerprints(chat_job("m", conversation(DOC.replace("Wren", "Alder"))))}
    assert one and other and not one & other


def test_short_prefixes_and_jobs_without_a_prompt_have_none() -> None:
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert affinity.fingerprints(chat_job("m", short)) == []
    now = time.time()
    embedding = Job(id="e", model="m", kind="embedding", inputs=[DOC], enqueued_at=now, deadline=now + 1)
    assert affinity.fingerprints(embedding) == []


def test_tools_change_every_fingerprint() -> None:
    tool = {"type": "function", "function": {"name": "ledger", "parameters": {"type": "object"}}}
    plain = {p.digest for p in affinity.fingerprints(chat_job("m", conversation()))}
    with_tools = {p.digest for p in affinity.fingerprints(chat_job("m", conversation(), tools=[tool]))}
    assert not plain & with_tools


def test_a_completion_prompt_is_fingerprinted_in_whole_chunks() -> None:
    now = time.time()
    text = "x" * (affinity.PROMPT_CHUNK_CHARS * 3 + 10)
    job = Job(id="c", model="m", kind="completion", prompt=text, enqueued_at=now, deadline=now + 1)
    longer = job.model_copy(update={"prompt": text + " and more"})
    prefixes = affinity.fingerprints(job)
    assert [p.chars for p in prefixes] == [affinity.PROMPT_CHUNK_CHARS * i for i in (1, 2, 3)]
    assert affinity.fingerprints(longer) == prefixes


def test_a_worker_publishes_the_longest_prefixes_of_each_slot() -> None:
    long_chat = conversation() + [{"role": "user", "content": f"question {i}"} for i in range(40)]
    prefixes = affinity.fingerprints(chat_job("m", long_chat))
    held = affinity.held({0: prefixes, 1: []})
    assert held == {p.digest for p in prefixes[-affinity.PUBLISHED_PER_SLOT:]}


# -- the choice of stream -----------------------------------------------------------------------------------
class Model:
    """One model's keys with fabricated workers: heartbeats, slots, pending entries, published prefixes."""

    def __init__(self, url: str) -> None:
        self.name = f"m{uuid.uuid4().hex[:8]}"
        self.url = url
        self.r = redis.Redis.from_url(url)
        self.r.xgroup_create(keys.request_stream(self.name), keys.GROUP, id="0", mkstream=True)

    def id(self, name: str) -> str:
        """Worker ids are unique per process in life; here per test."""
        return f"{self.name}-{name}"

    def worker(self, name: str, *, slots: int = 2, holds: list[Any] | None = None, beat_age_s: float = 0.0,
               draining: bool = False, kept: int | None = None) -> None:
        """`kept`: its slots keeping a conversation (default: one if it `holds` one, else none)."""
        worker_id = self.id(name)
        self.r.xgroup_create(keys.worker_stream(self.name, worker_id), keys.GROUP, id="0", mkstream=True)
        self.r.sadd(keys.dispatch_workers(self.name), worker_id)
        self.r.zadd(keys.worker_heartbeats(self.name), {worker_id: time.time() - beat_age_s})
        kept = (1 if holds else 0) if kept is None else kept
        self.r.hset(keys.worker_info(worker_id), mapping={"slots": slots, "draining": int(draining), "kept": kept})
        digests = [p.digest for p in affinity.fingerprints(chat_job(self.name, holds))] if holds else []
        if digests:
            self.r.sadd(keys.worker_prefixes(worker_id), *digests)

    def busy(self, name: str, count: int) -> None:
        """`count` entries of the shared stream taken by that worker (pending)."""
        worker_id = self.id(name)
        stream = keys.request_stream(self.name)
        for _ in range(count):
            self.r.xadd(stream, {"job": "{}"})
        self.r.xreadgroup(keys.GROUP, worker_id, {stream: ">"}, count=count)

    def submit(self, messages: list[dict[str, Any]], *, cache_aware: bool = True, max_queue: int = 100) -> str:
        async def go() -> str:
            client = QueueClient(self.url, cache_aware=cache_aware)
            try:
                return await client.submit(chat_job(self.name, messages), max_queue=max_queue)
            finally:
                await client.close()
        return asyncio.run(go())

    def own(self, name: str) -> str:
        return keys.worker_stream(self.name, self.id(name))

    @property
    def shared(self) -> str:
        return keys.request_stream(self.name)


@pytest.fixture
def model(redis_url: str) -> Model:
    return Model(redis_url)


def test_a_follow_up_goes_to_the_worker_holding_its_prefix(model: Model) -> None:
    model.worker("a", holds=conversation(DOC.replace("Wren", "Alder")))
    model.worker("b", holds=conversation())
    assert model.submit(follow_up(conversation())) == model.own("b")
    assert model.r.xlen(model.own("b")) == 1


def test_a_new_conversation_goes_to_the_shared_stream(model: Model) -> None:
    model.worker("a", holds=conversation())
    model.worker("b")
    assert model.submit(conversation(DOC.replace("Wren", "Kestrel"))) == model.shared


def test_a_new_conversation_takes_a_slot_keeping_nothing_before_one_keeping_another(model: Model) -> None:
    """Worker a's free slots both keep conversations (their next turns may be on their way); b keeps one of
    its two. On the shared stream a could take a new conversation and overwrite one of its own: it goes to b."""
    model.worker("a", holds=conversation(), kept=2)
    model.worker("b", holds=conversation(DOC.replace("Wren", "Alder")), kept=1)
    assert model.submit(conversation(DOC.replace("Wren", "Kestrel"))) == model.own("b")
    assert model.submit([{"role": "user", "content": "Hi"}]) == model.own("b")  # a short chat takes a slot too
    assert model.submit(conversation(DOC.replace("Wren", "Heron"))) == model.shared  # b's slots are spoken for
    # a follow-up still goes to the worker holding it
    assert model.submit(follow_up(conversation())) == model.own("a")


def test_the_worker_with_the_most_slots_keeping_nothing_takes_it(model: Model) -> None:
    model.worker("a", kept=2)
    model.worker("b", slots=4, kept=3)
    model.worker("c", slots=4, kept=1)
    assert model.submit(conversation(DOC.replace("Wren", "Kestrel"))) == model.own("c")


def test_with_no_slot_at_risk_or_none_to_spare_a_new_conversation_goes_to_the_shared_stream(model: Model) -> None:
    model.worker("a", kept=1)  # a slot keeping nothing: no kept conversation is at risk
    model.worker("b", kept=0)
    assert model.submit(conversation(DOC.replace("Wren", "Kestrel"))) == model.shared
    model.worker("c", kept=2)  # now c's are at risk, but nobody has a free slot keeping nothing
    model.busy("a", 2)
    model.busy("b", 2)
    assert model.submit(conversation(DOC.replace("Wren", "Heron"))) == model.shared
    model.worker("d", kept=0)  # and with dispatch off, never steered
    assert model.submit(conversation(DOC.replace("Wren", "Tern")), cache_aware=False) == model.shared
    assert model.submit(conversation(DOC.replace("Wren", "Tern"))) == model.own("d")


def test_a_holder_without_a_free_slot_is_passed_over(model: Model) -> None:
    model.worker("a")
    model.worker("b", slots=2, holds=conversation())
    model.busy("b", 1)
    assert model.submit(follow_up(conversation())) == model.own("b")  # one slot was still free
    assert model.submit(follow_up(conversation())) == model.shared  # its own stream now fills it


def test_a_dead_or_draining_holder_is_passed_over(model: Model) -> None:
    model.worker("a", holds=conversation(), beat_age_s=60)
    model.worker("b", holds=conversation(), draining=True)
    assert model.submit(follow_up(conversation())) == model.shared


def test_the_longest_held_prefix_wins(model: Model) -> None:
    model.worker("a", holds=conversation()[:1])  # the document only
    model.worker("b", holds=conversation())  # the document and the first question
    model.worker("c", holds=conversation()[:1])
    assert model.submit(follow_up(conversation())) == model.own("b")


def test_one_worker_or_dispatch_off_means_the_shared_stream(model: Model) -> None:
    model.worker("a", holds=conversation())
    assert model.submit(follow_up(conversation())) == model.shared  # alone: nothing to choose
    model.worker("b")
    assert model.submit(follow_up(conversation()), cache_aware=False) == model.shared
    assert model.submit(follow_up(conversation())) == model.own("a")


def test_the_backlog_counts_own_streams_and_a_full_queue_enqueues_nothing(model: Model) -> None:
    model.worker("a", slots=4, holds=conversation())
    model.worker("b")
    assert model.submit(follow_up(conversation()), max_queue=2) == model.own("a")
    assert model.submit(conversation(DOC.replace("Wren", "Kestrel")), max_queue=2) == model.shared
    with pytest.raises(OverloadedError):
        model.submit(follow_up(conversation()), max_queue=2)
    assert model.r.xlen(model.own("a")) + model.r.xlen(model.shared) == 2

    async def depths() -> dict[str, int]:
        client = QueueClient(model.url)
        try:
            return await client.queue_depths([model.name])
        finally:
            await client.close()
    assert asyncio.run(depths()) == {model.name: 2}


# -- entries left in a worker's own stream --------------------------------------------------------------------
def steal(model: Model, me: str, age_ms: int) -> Any:
    script = model.r.register_script(affinity.STEAL)
    return script(keys=[keys.dispatch_workers(model.name)],
                  args=[keys.GROUP, model.id(me), keys.worker_stream(model.name, ""), age_ms])


def test_an_entry_waiting_too_long_in_another_workers_stream_is_taken_once(model: Model) -> None:
    model.worker("a")
    model.worker("b")
    fresh = model.r.xadd(model.own("a"), {"job": "fresh"})
    assert steal(model, "b", 60_000) is None  # not waited long enough: left for its worker
    assert steal(model, "a", 0) is None  # never from one's own stream
    taken = steal(model, "b", 0)
    assert taken == [[model.own("a").encode(), [[fresh, [b"job", b"fresh"]]]]]
    assert steal(model, "b", 0) is None  # delivered once: nobody else gets it
    pending = model.r.xpending_range(model.own("a"), keys.GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(fresh, model.id("b").encode())]
