"""Tokens per minute per key on a real server: bursts, streams, embeddings, hosted models, and two
gateways sharing one Redis. Usage is read back from the responses and from Redis (the charges in
a key's sliding window; every test here ends well within its minute)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from server.queue import keys as redis_keys
from server.registry import parse_registry
from server.security.rate_limits import WINDOW_S
from server.settings import Settings
from tests.backends.fake_upstream import FakeUpstream
from tests.conftest import SMOLLM2, wait_until
from tests.gateway_thread import running_gateway
from tests.security.conftest import TPM, NamedKeys, SecureServer
from tests.security.test_leaks import redis_dump

pytestmark = pytest.mark.integration

SHARED_TPM = 300  # the two extra gateways' limit
UPSTREAM_KEY_ENV = "TPM_TEST_UPSTREAM_KEY"


def chat(words: int, **extra: Any) -> dict[str, Any]:
    """A prompt of about `words` tokens, answered in at most 4."""
    prompt = "Count the apples: " + "apple " * words
    return {"model": "tiny", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
            "temperature": 0, **extra}


def tokens_spent(r: redis.Redis, kid: str) -> int:
    """Tokens charged to key id `kid` in its window (the sum of its charges, `<nonce>:<tokens>`)."""
    return sum(int(member.rsplit(b":", 1)[1]) for member in r.zrange(redis_keys.token_window(kid), 0, -1))


def remaining(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def stream_usage(response: httpx.Response) -> tuple[dict[str, Any] | None, list[str]]:
    """(the usage chunk's usage, every data payload) of an SSE response."""
    payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    found = [json.loads(p)["usage"] for p in payloads if p != "[DONE]" and json.loads(p).get("usage")]
    return (found[-1] if found else None), payloads


# -- one server --------------------------------------------------------------------------------------
def test_a_burst_past_the_tpm_limit_gets_429_while_another_key_is_served(secure: SecureServer) -> None:
    url = secure.url + "/v1/chat/completions"
    served: list[int] = []
    in_window = 0  # tokens charged in the key's window, as the client saw them (all within a minute)
    refused: httpx.Response | None = None
    with httpx.Client(timeout=60, headers=secure.auth("tpm")) as client:
        for _ in range(TPM // 100 + 2):  # each is charged over 100 tokens: the window is spent before
            response = client.post(url, json=chat(150))
            if response.status_code == 429:
                refused = response
                break
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-limit-tokens"] == str(TPM)
            left = remaining(response)
            assert left == max(0, TPM - in_window), (left, served)  # a sliding window never starts afresh
            assert left > 0, "admitted with no tokens left"
            used = response.json()["usage"]["total_tokens"]
            assert used > 100
            served.append(used)
            in_window += used
    assert refused is not None, f"served {served} without a 429"
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["code"] == "tokens_limit_exceeded"
    assert "tokens per minute" in error["message"]
    # refused at admission because the most it may use (prompt estimate + max_tokens) no longer fits
    asked = int(error["message"].split("may use up to ")[1].split(";")[0])
    assert in_window + asked > TPM, f"refused with {in_window} of {TPM} tokens used, asking {asked}"
    assert asked >= served[-1] - 20, "the reservation is about what such a request uses"
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW_S
    assert refused.headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < asked
    assert refused.headers["x-ratelimit-reset-tokens"] == refused.headers["retry-after"] + "s"
    assert secure.keys["tpm"] not in refused.text

    other = httpx.post(url, json=chat(150), headers=secure.auth("tpm-other"), timeout=60)
    assert other.status_code == 200, other.text
    assert remaining(other) == TPM

    r = secure.redis()
    try:  # exactly the usage of the served requests, under the key's id; the refused one charged nothing
        assert tokens_spent(r, secure.key_id("tpm")) == sum(served)
    finally:
        r.close()


def test_streamed_requests_are_charged_with_or_without_a_usage_chunk(secure: SecureServer) -> None:
    url = secure.url + "/v1/chat/completions"
    kid = secure.key_id("tpm-stream")
    r = secure.redis()
    try:
        body = chat(40, stream=True, stream_options={"include_usage": True}, max_tokens=8)
        with httpx.stream("POST", url, json=body, headers=secure.auth("tpm-stream"), timeout=60) as response:
            assert response.status_code == 200
            assert response.headers["x-ratelimit-limit-tokens"] == str(TPM)
            assert remaining(response) == TPM
            usage, payloads = stream_usage(response)
        assert usage is not None and payloads[-1] == "[DONE]"
        wait_until(lambda: tokens_spent(r, kid) == usage["total_tokens"], timeout_s=5,
                   what="the streamed request's usage to be charged")

        before = tokens_spent(r, kid)
        body = chat(40, stream=True, max_tokens=8)
        with httpx.stream("POST", url, json=body, headers=secure.auth("tpm-stream"), timeout=60) as response:
            assert response.status_code == 200
            assert stream_usage(response)[0] is None  # the client did not ask for usage: charged all the same
        prompt = usage["prompt_tokens"]
        wait_until(lambda: tokens_spent(r, kid) > before, timeout_s=5, what="the second stream to be charged")
        assert prompt + 1 <= tokens_spent(r, kid) - before <= prompt + 8
    finally:
        r.close()


def test_a_stream_the_client_leaves_is_charged_what_it_used(secure: SecureServer) -> None:
    kid = secure.key_id("tpm-gone")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Tell a long story. " + "apple " * 120}],
            "max_tokens": 300, "stream": True}
    with httpx.stream("POST", secure.url + "/v1/chat/completions", json=body, headers=secure.auth("tpm-gone"),
                      timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line and '"role"' not in line:
                break  # the first text: hang up
    r = secure.redis()
    try:
        wait_until(lambda: tokens_spent(r, kid) > 120, timeout_s=10,
                   what="a stream cut off by its client to be charged its prompt and tokens so far")
    finally:
        r.close()


def test_embeddings_are_charged_their_prompt_tokens(secure: SecureServer) -> None:
    response = httpx.post(secure.url + "/v1/embeddings", headers=secure.auth("tpm-embed"), timeout=60,
                          json={"model": "tiny", "input": ["an apple a day", "keeps the doctor away"]})
    assert response.status_code == 200, response.text
    assert remaining(response) == TPM
    used = response.json()["usage"]["prompt_tokens"]
    assert used > 0
    r = secure.redis()
    try:
        wait_until(lambda: tokens_spent(r, secure.key_id("tpm-embed")) == used, timeout_s=5,
                   what="the embedding's prompt tokens to be charged")
    finally:
        r.close()


# -- two more gateways on the same Redis (and worker), with a hosted model -----------------------------
@dataclass
class Gateways(NamedKeys):
    urls: tuple[str, str]
    keys: dict[str, str]
    upstream: FakeUpstream


@pytest.fixture(scope="module")
def gateways(secure: SecureServer) -> Iterator[Gateways]:
    names = ("hosted", "shared")
    keys = {name: f"sk-{name}-{secrets.token_hex(16)}" for name in names}
    with FakeUpstream() as upstream, pytest.MonkeyPatch.context() as env:
        env.setenv(UPSTREAM_KEY_ENV, "sk-upstream-" + secrets.token_hex(8))
        registry = parse_registry({"models": {
            "tiny": {"gguf": SMOLLM2},
            "remote": {"backend": "hosted", "litellm_model": "openai/fake-model", "api_base": upstream.api_base,
                       "api_key_env": UPSTREAM_KEY_ENV, "timeout": 20, "retries": 0},
        }})
        settings = Settings(redis_url=secure.redis_url, api_keys=SecretStr(",".join(keys.values())),
                            rate_limit_tpm=SHARED_TPM, reload_interval_s=0)
        with running_gateway(settings, registry) as a, running_gateway(settings, registry) as b:
            yield Gateways((a, b), keys, upstream)


def test_the_token_count_holds_across_gateways_sharing_redis(gateways: Gateways) -> None:
    """Spend one key's tokens through both gateways in turn (within a minute: one sliding window)."""
    auth = gateways.auth("shared")
    a, b = gateways.urls

    def seen_by_b() -> int:
        return remaining(httpx.get(b + "/v1/models", headers=auth, timeout=10))

    before = seen_by_b()
    first = httpx.post(a + "/v1/chat/completions", json=chat(60), headers=auth, timeout=60)
    assert first.status_code == 200, first.text
    used = first.json()["usage"]["total_tokens"]
    wait_until(lambda: seen_by_b() != before, timeout_s=5, what="gateway B to see what gateway A charged")
    after = seen_by_b()

    served = {a: used, b: 0}
    refused: tuple[str, httpx.Response] | None = None
    for i in range(2 * SHARED_TPM // 50):
        gateway = (b, a)[i % 2]
        response = httpx.post(gateway + "/v1/chat/completions", json=chat(60), headers=auth, timeout=60)
        if response.status_code == 429:
            refused = (gateway, response)
            break
        assert response.status_code == 200, response.text
        served[gateway] += response.json()["usage"]["total_tokens"]
    assert refused is not None, f"served {served} without a 429"
    gateway, response = refused
    other = b if gateway == a else a
    at_other = httpx.post(other + "/v1/chat/completions", json=chat(60), headers=auth, timeout=60)
    assert (before, after) == (SHARED_TPM, max(0, SHARED_TPM - used))
    assert response.json()["error"]["code"] == "tokens_limit_exceeded"
    assert at_other.status_code == 429, at_other.text
    assert at_other.headers["x-ratelimit-remaining-tokens"] == str(max(0, SHARED_TPM - sum(served.values())))
    # refused once what both charged together, plus the most the request may use, passed the limit,
    # while neither alone had
    asked = int(response.json()["error"]["message"].split("may use up to ")[1].split(";")[0])
    assert sum(served.values()) + asked > SHARED_TPM > max(served.values()) + asked, (served, asked)


def test_hosted_requests_are_charged_the_upstream_usage(gateways: Gateways, secure: SecureServer) -> None:
    url = gateways.urls[0] + "/v1/chat/completions"
    auth = gateways.auth("hosted")
    kid = gateways.key_id("hosted")
    body = {"model": "remote", "messages": [{"role": "user", "content": "apple " * 40}], "max_tokens": 16}
    r = secure.redis()
    try:
        whole = httpx.post(url, json=body, headers=auth, timeout=60)
        assert whole.status_code == 200, whole.text
        assert whole.headers["x-slm-backend"] == "hosted" and remaining(whole) == SHARED_TPM
        used = whole.json()["usage"]["total_tokens"]
        wait_until(lambda: tokens_spent(r, kid) == used, timeout_s=5, what="the hosted answer to be charged")

        streamed_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url, json=streamed_body, headers=auth, timeout=60) as response:
            assert response.status_code == 200
            usage, _ = stream_usage(response)
        assert usage is not None and usage["total_tokens"] == used  # the fake's usage depends on the prompt
        wait_until(lambda: tokens_spent(r, kid) == 2 * used, timeout_s=5, what="the hosted stream to be charged")
    finally:
        r.close()
    assert gateways.upstream.requests, "the hosted model was never asked"


def test_no_api_key_appears_in_redis_keys_or_values(secure: SecureServer, gateways: Gateways) -> None:
    response = httpx.post(secure.url + "/v1/chat/completions", json=chat(20), headers=secure.auth("tpm-trace"),
                          timeout=60)
    assert response.status_code == 200, response.text
    r = secure.redis()
    try:
        kid = secure.key_id("tpm-trace")
        wait_until(lambda: tokens_spent(r, kid) > 0, timeout_s=5, what="the request to be charged")
        names = [name.decode() for name in r.scan_iter(match="slm:ratelimit:*")]
        dump = b"\n".join(redis_dump(r))
    finally:
        r.close()
    assert redis_keys.token_window(kid) in names and redis_keys.token_window_total(kid) in names, names
    assert redis_keys.request_window(kid) in names, names
    for secret in [*secure.keys.values(), *gateways.keys.values()]:
        assert secret.encode() not in dump, f"{secret[:12]}... found in Redis"
        digest = hashlib.sha256(secret.encode())
        assert digest.hexdigest().encode() not in dump and digest.digest() not in dump
