"""Hostile JSON schemas on a real `serve` (issue 17, items 1 and 2): each is refused by the gateway
with a 400 naming the offending key, fast, while another client's stream keeps going on the same
worker process; nothing reaches a worker, and the log holds no traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from server.schema_limits import MAX_DEPTH, MAX_NODES, MAX_PROPERTIES, MAX_REPEAT, MAX_TOTAL_REPEAT
from tests.conftest import LiveServer, start_server, stop_server, tiny_registry
from tests.integration.test_faults import STORY, events_of
from tests.pace import tokens_lasting

pytestmark = pytest.mark.integration

REGISTRY = tiny_registry(n_ctx=1024, n_threads=2, parallel=2)
RF = "response_format.json_schema.schema"
TOOL = "tools.0.function.parameters"
STREAM_HOLD_S = 10.0  # how long the other client's stream should run while the hostile schemas arrive


def nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props)}


# (name, schema, the param path under the schema's root, or None when only the prefix is checked)
HOSTILE: list[tuple[str, dict[str, Any], str | None]] = [
    ("maxLength", obj(x={"type": "string", "maxLength": 20_000}), ".properties.x.maxLength"),
    ("minLength", obj(x={"type": "string", "minLength": 20_000_000}), ".properties.x.minLength"),
    ("maxItems", obj(x={"type": "array", "items": {"type": "integer"}, "maxItems": 20_000}),
     ".properties.x.maxItems"),
    ("minItems", obj(x={"type": "array", "items": {"type": "integer"}, "minItems": 50_000}),
     ".properties.x.minItems"),
    ("pattern repetition", obj(x={"type": "string", "pattern": "^a{0,20000}$"}), ".properties.x.pattern"),
    ("nested quantifiers", obj(x={"type": "string", "pattern": "^(a?){0,100}$"}), ".properties.x.pattern"),
    ("nested repetitions", obj(x={"type": "string", "pattern": "^(a{1,40}){1,40}$"}), ".properties.x.pattern"),
    ("deep nesting", nested(240), None),
    ("too many properties", obj(**{f"p{i}": {"type": "string"} for i in range(MAX_PROPERTIES + 1)}),
     ".properties"),
    ("too many nodes", {"type": "object", "properties": {f"p{i}": {"type": "object", "properties": {
        f"q{j}": {"type": "string"} for j in range(40)}} for i in range(MAX_NODES // 40 + 1)}}, None),
    ("total repetitions", obj(**{f"s{i}": {"type": "string", "maxLength": MAX_REPEAT}
                                 for i in range(MAX_TOTAL_REPEAT // MAX_REPEAT + 1)}), None),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("schemas"), REGISTRY)
    yield srv
    stop_server(srv)


def as_response_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def as_tool(schema: dict[str, Any]) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
            "tool_choice": "required"}


def worker_pid(r: redis.Redis, job_id: str) -> int:
    started = [e for e in events_of(r, job_id) if e["type"] == "started"]
    return int(started[-1]["worker"].split("-")[-2])


def test_hostile_schemas_get_a_400_and_another_clients_stream_goes_on(server: LiveServer) -> None:
    r = redis.Redis.from_url(server.redis_url())
    body = {"model": "tiny", "messages": STORY, "max_tokens": 120, "temperature": 0, "stream": True}
    # long enough to outlast the refusals (a few seconds on a loaded machine): 120 tokens on a fast one
    body["max_tokens"] = tokens_lasting(server.url, body, STREAM_HOLD_S, low=24, high=120)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as stream:
        lines = stream.iter_lines()
        first = next(json.loads(line[6:]) for line in lines if line.startswith("data: {"))
        job_id = first["id"].removeprefix("chatcmpl-")
        pid = worker_pid(r, job_id)
        for name, schema, tail in HOSTILE:
            for wrap, root in ((as_response_format, RF), (as_tool, TOOL)):
                request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                           **wrap(schema)}
                began = time.monotonic()
                answer = httpx.post(server.url + "/v1/chat/completions", json=request, timeout=30)
                took = time.monotonic() - began
                assert answer.status_code == 400, (name, root, answer.text[:300])
                error = answer.json()["error"]
                assert error["code"] == "schema_too_complex", (name, error)
                assert error["type"] == "invalid_request_error"
                assert error["param"].startswith(root), (name, error["param"])
                if tail is not None:
                    assert error["param"] == root + tail, (name, error["param"])
                assert took < 1.0, f"{name} took {took:.2f}s to refuse"
        frames = [line[6:] for line in lines if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert "error" not in chunks[-1], chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    # a stream that completes without an error frame stayed on its worker (a redelivery after text went
    # out ends it with `worker_lost`), and that worker process is alive and was never restarted
    assert Path(f"/proc/{pid}").exists()
    log = server.log()
    assert "Traceback" not in log
    assert "exited with" not in log and "restarting" not in log


def test_a_schema_at_the_bounds_is_served(server: LiveServer) -> None:
    schema = obj(x={"type": "string", "maxLength": MAX_REPEAT, "pattern": f"^[a-z]{{1,{MAX_REPEAT}}}$"},
                 y={"type": "array", "items": {"type": "integer"}, "maxItems": MAX_REPEAT},
                 z=nested(MAX_DEPTH - 3))
    for wrap in (as_response_format, as_tool):
        request = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                   "temperature": 0, **wrap(schema)}
        answer = httpx.post(server.url + "/v1/chat/completions", json=request, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
