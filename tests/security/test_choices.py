"""`n` x `max_tokens` on a real `serve` (issue 17, item 3): bounded by settings, reserved against the
key's token limit when the request is admitted, and one request's choices never take every slot."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from server.embedded_redis import EmbeddedRedis
from server.queue import keys as redis_keys
from tests.conftest import LiveServer, start_server, stop_server, tiny_registry, wait_until
from tests.integration.test_faults import STORY
from tests.security.conftest import NamedKeys

pytestmark = pytest.mark.integration

TPM = 1000
REGISTRY = tiny_registry(n_ctx=1024, n_threads=2, parallel=2)
NAMES = ("bounds", "reserve", "big", "small")


class Served(NamedKeys):
    def __init__(self, live: LiveServer, redis_url: str, keys: dict[str, str]) -> None:
        self.live, self.redis_url, self.keys = live, redis_url, keys

    def post(self, name: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.live.url + "/v1/chat/completions", json=body, headers=self.auth(name), timeout=120)

    def window_total(self, name: str) -> int:
        """The tokens the key's sliding window holds: the sum of its charges (reservations included)."""
        r = redis.Redis.from_url(self.redis_url)
        charges = r.zrange(redis_keys.token_window(self.key_id(name)), 0, -1)
        return sum(int(member.rsplit(b":", 1)[1]) for member in charges)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    keys = {name: f"sk-{name}-{secrets.token_hex(16)}" for name in NAMES}
    with EmbeddedRedis() as store:
        live = start_server(tmp_path_factory.mktemp("choices"), REGISTRY, env={
            "SLM_REDIS_URL": store.url, "SLM_API_KEYS": ",".join(keys.values()), "SLM_RATE_LIMIT_TPM": str(TPM)})
        try:
            yield Served(live, store.url, keys)
        finally:
            stop_server(live)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": STORY, "temperature": 0, **extra}


def test_n_and_n_times_max_tokens_are_bounded(served: Served) -> None:
    too_many = served.post("bounds", chat(n=9, max_tokens=4))
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n", too_many.text
    assert "at most 8" in too_many.json()["error"]["message"]
    too_long = served.post("bounds", chat(n=4, max_tokens=5000))
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "max_tokens", too_long.text
    assert "16384" in too_long.json()["error"]["message"]


def test_n_times_max_tokens_is_reserved_against_the_token_limit(served: Served) -> None:
    never_fits = served.post("reserve", chat(n=8, max_tokens=200))
    assert never_fits.status_code == 429, never_fits.text
    assert never_fits.json()["error"]["code"] == "tokens_limit_exceeded"
    assert "more than this API key's limit" in never_fits.json()["error"]["message"]
    assert served.window_total("reserve") == 0, "a refused request holds nothing"
    held = dict(chat(n=2, max_tokens=200, stream=True))
    reserved = 2 * 425  # each: n x max_tokens + a prompt of ~25 tokens (estimated)
    with httpx.stream("POST", served.live.url + "/v1/chat/completions", json=held, headers=served.auth("reserve"),
                      timeout=120) as first, \
            httpx.stream("POST", served.live.url + "/v1/chat/completions", json=held,
                         headers=served.auth("reserve"), timeout=120) as second:
        assert first.status_code == 200 and second.status_code == 200
        assert served.window_total("reserve") >= reserved - 20, "both requests hold their reservations"
        third = served.post("reserve", chat(n=2, max_tokens=200))  # both streams still hold theirs
        assert third.status_code == 429, third.text
        assert third.json()["error"]["code"] == "tokens_limit_exceeded"
    # both clients hung up after a few tokens: each is charged what it used, its reservation returned
    wait_until(lambda: 0 < served.window_total("reserve") < reserved // 2, timeout_s=30,
               what="the reservations replaced by what was used")


def test_a_large_n_leaves_a_slot_for_another_key(served: Served) -> None:
    big = chat(n=3, max_tokens=20, stream=True)
    with httpx.stream("POST", served.live.url + "/v1/chat/completions", json=big, headers=served.auth("big"),
                      timeout=120) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if '"content"' in line)
        small = served.post("small", {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 5, "temperature": 0})
        assert small.status_code == 200, small.text
        later = [line for line in lines if '"content"' in line]
    assert later, "the large-n request had finished before the other key's request was served"
    assert {json.loads(line[6:])["choices"][0]["index"] for line in later} >= {2}
