"""The load generator against a fake OpenAI-compatible streaming server on 127.0.0.1."""

from __future__ import annotations

import argparse
import json

import pytest

from server.bench import add_arguments, run, run_bench, run_bench_async
from tests.bench.conftest import FakeServer

PROMPT = "Count."


def test_closed_loop_sends_every_request_with_the_asked_concurrency(fake_server: FakeServer) -> None:
    fake_server.chunk_delay_s = 0.01  # long enough for three clients to overlap
    summary = run_bench(fake_server.url, "ok", concurrency=3, requests=7, max_tokens=4, prompt=PROMPT,
                        api_key="sk-test")
    assert len(fake_server.bodies) == 7
    assert fake_server.max_in_flight == 3
    assert set(fake_server.auth) == {"Bearer sk-test"}
    body = fake_server.bodies[0]
    assert body["stream"] is True
    assert body["temperature"] == 0
    assert body["max_tokens"] == 4
    assert body["messages"] == [{"role": "user", "content": PROMPT}]
    assert body["stream_options"] == {"include_usage": True}
    assert summary["requests"] == 7
    assert summary["completed"] == 7
    assert summary["errors"] == 0
    assert summary["completion_tokens"] == 28
    assert summary["usage_reported"] is True
    assert summary["completion_tokens_per_s"] > 0
    assert summary["requests_per_s"] > 0
    for key in ("ttft_ms", "itl_ms", "e2e_ms"):
        assert set(summary[key]) == {"p50", "p90", "p99", "mean"}
        assert all(isinstance(v, float) and v > 0 for v in summary[key].values())
    assert summary["ttft_ms"]["p50"] <= summary["e2e_ms"]["p50"]


def test_without_usage_content_chunks_are_counted(fake_server: FakeServer) -> None:
    summary = run_bench(fake_server.url, "no-usage", concurrency=2, requests=4, max_tokens=5, prompt=PROMPT)
    assert fake_server.auth == [None] * 4
    assert summary["completed"] == 4
    assert summary["completion_tokens"] == 20
    assert summary["usage_reported"] is False


def test_http_errors_are_counted_not_raised(fake_server: FakeServer) -> None:
    summary = run_bench(fake_server.url, "flaky", concurrency=2, requests=6, max_tokens=3, prompt=PROMPT)
    assert summary["requests"] == 6
    assert summary["completed"] == 3
    assert summary["errors"] == 3
    assert summary["error_kinds"] == {"HTTP 500: engine exploded": 3}
    assert summary["completion_tokens"] == 9  # only the successful requests


@pytest.mark.parametrize(
    ("model", "kind"),
    [("midstream", "stream error: worker lost"), ("truncated", "stream ended without [DONE]")],
)
async def test_broken_streams_are_errors(fake_server: FakeServer, model: str, kind: str) -> None:
    summary = await run_bench_async(fake_server.url, model, concurrency=1, requests=2, max_tokens=3, prompt=PROMPT)
    assert summary["errors"] == 2
    assert summary["error_kinds"] == {kind: 2}
    assert summary["ttft_ms"]["p50"] is None


def test_an_unreachable_server_is_a_transport_error() -> None:
    summary = run_bench("http://127.0.0.1:9/v1", "ok", concurrency=1, requests=2, max_tokens=1, prompt=PROMPT,
                        timeout_s=5)
    assert summary["errors"] == 2
    assert summary["error_kinds"] == {"transport: ConnectError": 2}


def test_warmup_requests_are_not_counted(fake_server: FakeServer) -> None:
    summary = run_bench(fake_server.url, "ok", concurrency=1, requests=2, max_tokens=2, prompt=PROMPT, warmup=2)
    assert len(fake_server.bodies) == 4
    assert summary["requests"] == 2


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_prints_exactly_one_json_line(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(_args(["--url", fake_server.url, "--model", "ok", "--concurrency", "2", "--requests", "4",
                      "--max-tokens", "3", "--warmup", "0"]))
    out = capsys.readouterr().out
    assert code == 0
    assert out.endswith("\n")
    assert out.count("\n") == 1
    summary = json.loads(out)
    assert summary["completed"] == 4
    assert summary["concurrency"] == 2
    assert summary["model"] == "ok"


def test_run_exit_code_says_some_requests_failed(fake_server: FakeServer,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = run(_args(["--url", fake_server.url, "--model", "flaky", "--requests", "4", "--warmup", "0"]))
    assert code == 1
    assert json.loads(capsys.readouterr().out)["errors"] == 2


def test_url_and_key_come_from_the_environment(fake_server: FakeServer, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLM_URL", fake_server.url)
    monkeypatch.setenv("SLM_API_KEY", "sk-env")
    assert run(_args(["--model", "ok", "--requests", "1", "--max-tokens", "1", "--warmup", "0"])) == 0
    assert fake_server.auth == ["Bearer sk-env"]
    assert json.loads(capsys.readouterr().out)["url"] == fake_server.url


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        _args(["--concurrency", "0"])
    with pytest.raises(ValueError, match=">= 1"):
        run_bench("http://127.0.0.1:9/v1", "ok", concurrency=1, requests=0, max_tokens=1, prompt=PROMPT)
