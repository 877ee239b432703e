"""A multi-turn item through a real local model (SmolLM2 behind the real server), judged by the other
shipped model: the requests the server received (seen by a recording proxy in front of it) carry the
model's own earlier answers."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.compare import command

ITEM = {"id": "mt-1", "lang": "en", "category": "reasoning", "scoring": "judge",
        "turns": ["Name one colour of the sky.", "Now name another colour."],
        "reference": ["Blue.", "Grey."]}  # fmt: skip


class RecordingProxy:
    """Forwards every request to `upstream` and keeps the JSON bodies of the POSTs it passed on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.bodies: list[dict[str, Any]] = []
        self.http = httpx.Client(base_url=upstream, timeout=300)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if body:
                    proxy.bodies.append(json.loads(body))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                reply = proxy.http.request(method, self.path, content=body or None, headers=headers)
                self.send_response(reply.status_code)
                for name in ("content-type", "x-slm-model", "x-request-id"):
                    if name in reply.headers:
                        self.send_header(name, reply.headers[name])
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_POST(self) -> None:
                self._forward("POST")

        return Handler

    def __enter__(self) -> RecordingProxy:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()


@pytest.fixture
def proxy(live_server_url: str) -> Iterator[RecordingProxy]:
    with RecordingProxy(live_server_url) as recording:
        yield recording


@pytest.mark.integration
def test_multi_turn_item_feeds_back_the_models_answers(proxy: RecordingProxy, tmp_path: Path) -> None:
    eval_file = tmp_path / "mt.jsonl"
    eval_file.write_text(json.dumps(ITEM) + "\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--url", proxy.url + "/v1", "--models", "smollm2", "--judge", "gemma3-270m",
                              "--eval", str(eval_file), "--max-tokens", "24", "--warmup", "0",
                              "--judge-max-tokens", "48", "--out", str(out)])  # fmt: skip
    progress: list[str] = []
    assert command.run(args, progress=progress.append) == 0, "\n".join(progress)
    doc: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    first, second = (r for r in doc["requests"] if r["model"] == "smollm2")
    assert (first["turn"], second["turn"]) == (1, 2)
    assert first["error"] is None and second["error"] is None and first["answer"].strip()

    asked = [b for b in proxy.bodies if b["model"] == "smollm2"]
    assert [b["messages"] for b in asked] == [
        [{"role": "user", "content": ITEM["turns"][0]}],
        [{"role": "user", "content": ITEM["turns"][0]}, {"role": "assistant", "content": first["answer"]},
         {"role": "user", "content": ITEM["turns"][1]}],
    ]  # fmt: skip
    assert all(b["stream"] is True for b in asked)

    judged = [b for b in proxy.bodies if b["model"] == "gemma3-270m"]
    assert 2 <= len(judged) <= 4  # two turns, each asked once or twice (a tiny judge may need its retry)
    assert all("stream" not in b or not b["stream"] for b in judged)
    turn_two = second["judgement"]["prompt"][1]["content"]
    assert first["answer"].strip() in turn_two and "### User:\nNow name another colour." in turn_two
    assert "[The Start of Reference Answer]\nGrey." in turn_two
    judge = doc["judge"]
    assert judge["model"] == "gemma3-270m" and judge["requests"] == len(judged)
    missing = sum(r["judge_score"] is None for r in (first, second))
    assert judge["missing"] == missing and doc["models"][0]["judge_missing"] == missing
    assert doc["models"][0]["categories"]["reasoning"]["n"] == 2
