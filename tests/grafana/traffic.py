"""Send a known mix of requests to a running slm-server, so its metrics have something to show.

`send_traffic(base_url)` asks /v1/models which models there are and, for each, sends one plain
and one streamed chat completion and one plain completion (all of them at once); then, against the first model, one
invalid request (a 4xx: a validation error) and one streamed request that the client abandons
after the first frame (a client disconnect). It uses only the standard library and returns what
happened, so a test can wait until Prometheus has seen at least `report.sent` requests.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrafficReport:
    models: list[str]
    statuses: Counter[int] = field(default_factory=Counter)  # HTTP status -> number of requests

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def succeeded(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


class _Client:
    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout

    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        conn = self.connect()
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(method, self.prefix + path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def abandon_stream(self, path: str, body: Any) -> int:
        """Start a streamed request, read until the first data frame, then hang up."""
        conn = self.connect()
        try:
            conn.request("POST", self.prefix + path, body=json.dumps(body).encode(),
                         headers={"content-type": "application/json"})  # fmt: skip
            response = conn.getresponse()
            if response.status == 200:
                while line := response.readline():
                    if line.startswith(b"data:"):
                        break
            return response.status
        finally:
            conn.close()


def list_models(base_url: str, timeout: float = 30.0) -> list[str]:
    status, body = _Client(base_url, timeout).request("GET", "/v1/models")
    if status != 200:
        raise RuntimeError(f"GET /v1/models: {status} {body[:200]!r}")
    return [entry["id"] for entry in json.loads(body)["data"]]


def send_traffic(
    base_url: str,
    models: Sequence[str] | None = None,
    *,
    max_tokens: int = 8,
    timeout: float = 120.0,
) -> TrafficReport:
    client = _Client(base_url, timeout)
    report = TrafficReport(list(models) if models is not None else list_models(base_url, timeout))
    if not report.models:
        raise RuntimeError("the server lists no model")
    messages = [{"role": "user", "content": "Count from one to five."}]
    requests: list[tuple[str, dict[str, Any]]] = []
    for model in report.models:
        chat = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        requests += [("/v1/chat/completions", chat), ("/v1/chat/completions", {**chat, "stream": True})]
        completion = {"model": model, "prompt": "One, two,", "max_tokens": max_tokens, "temperature": 0}
        requests.append(("/v1/completions", completion))
    # all at once: a local model's worker batches them (one decode step serves them all)
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        for status, _ in pool.map(lambda r: client.request("POST", *r), requests):
            report.statuses[status] += 1
    first = report.models[0]
    status, _ = client.request("POST", "/v1/chat/completions", {"model": first, "messages": "not a list"})
    report.statuses[status] += 1
    stream = {"model": first, "messages": messages, "max_tokens": 256, "stream": True}
    report.statuses[client.abandon_stream("/v1/chat/completions", stream)] += 1
    if report.succeeded == 0:
        raise RuntimeError(f"no request succeeded: {dict(report.statuses)}")
    return report
