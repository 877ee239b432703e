"""Nothing leaks: a canary in a prompt, and the API keys, appear in no log, metric or Redis value."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import httpx
import pytest

from server.queue import keys as queue_keys
from server.registry import parse_registry
from server.settings import Settings
from tests.conftest import SMOLLM2, LiveServer, wait_until
from tests.gateway_thread import running_gateway
from tests.security.conftest import SecureServer

pytestmark = pytest.mark.integration


def redis_dump(client: Any) -> list[bytes]:
    """Every key of the Redis and every value under it, as bytes."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        out.append(key)
        kind = client.type(key).decode()
        value: Any
        if kind == "string":
            value = [client.get(key)]
        elif kind == "hash":
            value = [b for pair in client.hgetall(key).items() for b in pair]
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = list(client.smembers(key))
        elif kind == "zset":
            value = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = [b for _, fields in client.xrange(key) for pair in fields.items() for b in pair]
            value += [str(client.xinfo_groups(key)).encode()]
        else:
            value = [kind.encode()]
        out.extend(v for v in value if v is not None)
    return out


def test_a_prompt_canary_and_the_keys_leave_no_trace(secure: SecureServer) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    auth = secure.auth("canary")
    ask = f"Repeat after me: {canary}"
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": ask}],
                                  "max_tokens": 24, "temperature": 0}),
        ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "system", "content": canary},
                                                                {"role": "user", "content": ask}],
                                  "max_tokens": 8, "stream": True}),
        ("/v1/completions", {"model": "tiny", "prompt": ask, "max_tokens": 8}),
        # refused by the worker (longer than the context): the prompt must not end up in the error either.
        # 20 canaries are ~700 tokens (its hex digits are a token each), past the 512 of the context, while
        # the gateway's estimate (4 characters a token) stays under the key's TPM reservation.
        ("/v1/completions", {"model": "tiny", "prompt": (canary + " ") * 20, "max_tokens": 8}),
    ]
    statuses = []
    for path, body in requests:
        response = httpx.post(secure.url + path, json=body, headers=auth, timeout=60)
        statuses.append(response.status_code)
        if response.status_code != 200:
            assert canary not in response.text
    assert statuses == [200, 200, 200, 400]

    r = secure.redis()
    try:
        def responses_gone() -> bool:
            return not list(r.scan_iter(match=queue_keys.response_stream("*")))

        wait_until(responses_gone, timeout_s=10, what="the response streams to be deleted after completion")
        dump = b"\n".join(redis_dump(r))
    finally:
        r.close()
    assert dump, "the Redis holds nothing at all: the scan looked at the wrong one"
    assert b"slm:ratelimit:" in dump  # the limiter's keys are there, named by key id
    secrets = [canary, *secure.keys.values()]
    metrics = httpx.get(secure.url + "/metrics", timeout=10).text
    log = secure.live.log()
    assert "API keys: " in log and "configured" in log
    for secret in secrets:
        assert secret.encode() not in dump, f"{secret[:12]}... found in Redis"
        assert secret not in metrics, f"{secret[:12]}... found in /metrics"
        assert secret not in log, f"{secret[:12]}... found in the server log"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_prompts_reach_the_logs_only_when_the_setting_asks(live_server: LiveServer) -> None:
    registry = parse_registry({"models": {"smollm2": {"gguf": SMOLLM2, "n_ctx": 1024}}})
    redis_url = live_server.redis_url()
    collected = _Collect()
    prompts = logging.getLogger("slm.prompts")
    level = prompts.level
    prompts.setLevel(logging.INFO)  # as `SLM_LOG_LEVEL=INFO` sets it in the server
    prompts.addHandler(collected)
    try:
        for log_prompts in (False, True):
            canary = f"CANARY-{uuid.uuid4().hex}"
            settings = Settings(redis_url=redis_url, reload_interval_s=0, log_prompts=log_prompts)
            with running_gateway(settings, registry) as url:
                wait_until(lambda u=url: httpx.get(u + "/ready", timeout=5).status_code == 200, timeout_s=30,
                           what="the gateway to see the worker")
                body = {"model": "smollm2", "messages": [{"role": "user", "content": f"Say {canary}"}],
                        "max_tokens": 12, "temperature": 0, "stream": True}
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
                    assert response.status_code == 200
                    frames = [json.loads(line[6:]) for line in response.iter_lines()
                              if line.startswith("data: {")]
            answer = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f["choices"])
            logged = "\n".join(collected.lines)
            if not log_prompts:
                assert collected.lines == [], "prompt logging is on by default"
                continue
            assert canary in logged
            assert answer and json.dumps(answer, ensure_ascii=False) in logged
    finally:
        prompts.removeHandler(collected)
        prompts.setLevel(level)
