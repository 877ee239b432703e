"""The command and runner driven against the tiny fake OpenAI server in conftest.py (no model)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
import pytest

from server.compare.command import add_arguments, run
from server.compare.evalset import load_eval_set
from server.compare.runner import RunConfig, Runner, choose_models, list_models, make_client

if TYPE_CHECKING:  # the fixture's type; conftest modules are not imported at run time
    from conftest import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="slm-server compare")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def run_quietly(args: argparse.Namespace) -> tuple[int, list[str]]:
    lines: list[str] = []
    return run(args, progress=lines.append), lines


def test_fake_default_models_leave_out_embedding_entries(fake_openai: FakeOpenAI) -> None:
    with make_client(fake_openai.url, "none", 10) as client:
        assert list_models(client) == ["fast", "slow", "foreign", "broken"]


def test_runner_reads_server_timings_and_header(fake_openai: FakeOpenAI) -> None:
    items = load_eval_set().items[:2]
    fake_openai.answers["fast"] = lambda messages: "B" if "Red Planet" in messages[-1]["content"] else "15"
    progress: list[str] = []
    with make_client(fake_openai.url, "none", 10) as client:
        runs = Runner(client, RunConfig(max_tokens=16, warmup=1), progress.append).run(["fast"], items)
    results = runs[0].results
    assert [r.score for r in results] == [1.0, 1.0]
    first = results[0]
    assert (first.timing_source, first.served_by, first.finish_reason) == ("server", "fast", "stop")
    assert (first.prompt_ms, first.predicted_ms, first.total_ms, first.queue_ms) == (20.0, 30.0, 50.0, 1.5)
    assert first.client_ttft_ms is not None and first.client_total_ms is not None
    assert 0 < first.client_ttft_ms <= first.client_total_ms
    assert first.completion_tokens == 1 and first.tokens_per_s == pytest.approx(1 / 0.03)
    sent = fake_openai.requests
    assert len(sent) == 3  # warm-up + 2 items
    assert all(r["stream"] is True and r["stream_options"] == {"include_usage": True} for r in sent)
    assert sent[1]["max_tokens"] == 16 and sent[1]["temperature"] == 0.0
    assert sent[1]["messages"][0]["role"] == "system"
    assert progress[0] == "[1/1] fast: warm-up"
    assert progress[1].startswith("[1/1] fast: item 1/2 (mc-en-1)")


def test_runner_falls_back_to_the_client_clock(fake_openai: FakeOpenAI) -> None:
    fake_openai.answers["foreign"] = lambda _: "a longer answer in several chunks"
    with make_client(fake_openai.url, "none", 10) as client:
        result = Runner(client, RunConfig(warmup=0), lambda _: None).request(
            "foreign", load_eval_set().items[0], 1
        )
    assert result.timing_source == "client" and result.error is None
    assert result.client_ttft_ms is not None and result.client_total_ms is not None
    assert result.prompt_ms == result.client_ttft_ms
    assert result.total_ms == result.client_total_ms
    assert result.predicted_ms == pytest.approx(result.client_total_ms - result.client_ttft_ms)
    assert result.completion_tokens == 11


def test_command_writes_the_three_outputs(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.answers["slow"] = lambda _: "A"
    out = tmp_path / "out"
    code, progress = run_quietly(
        parse(
            "--url",
            fake_openai.url,
            "--models",
            "fast,slow",
            "--limit",
            "4",
            "--repeats",
            "2",
            "--out",
            str(out),
        )
    )
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"compare.png", "report.md", "results.json"}
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [m["model"] for m in doc["models"]] == ["fast", "slow"]
    assert len(doc["requests"]) == 2 * 4 * 2
    assert doc["meta"]["items"] == 4 and doc["meta"]["repeats"] == 2 and doc["meta"]["url"] == fake_openai.url
    for request in doc["requests"]:
        assert request["total_ms"] == pytest.approx(request["prompt_ms"] + request["predicted_ms"])
    slow = doc["models"][1]
    assert slow["total_ms"]["median"] == 500.0 and slow["skipped"] is None
    assert "| slow | " in (out / "report.md").read_text(encoding="utf-8")
    assert any("item 8/8" in line for line in progress)
    assert progress[-1].startswith("wrote ")


def test_command_skips_a_model_whose_warmup_fails(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    code, progress = run_quietly(parse("--url", fake_openai.url, "--models", "fast,broken", "--limit", "1",
                                       "--out", str(tmp_path)))  # fmt: skip
    assert code == 1
    assert "[2/2] broken: skipped (warm-up failed: HTTP 400: this model cannot chat)" in progress
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["models"][1]["skipped"].startswith("warm-up failed")
    assert "this model cannot chat" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_command_gives_up_on_a_failing_model_without_warmup(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    code, progress = run_quietly(parse("--url", fake_openai.url, "--models", "broken", "--warmup", "0",
                                       "--out", str(tmp_path)))  # fmt: skip
    assert code == 1
    assert len(fake_openai.requests) == 5
    assert any("broken: skipped (gave up after 5 failures in a row: HTTP 400" in line for line in progress)


def test_unknown_model_is_a_usage_error(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_quietly(parse("--url", fake_openai.url, "--models", "fast,nope", "--out", str(tmp_path)))
    assert code == 2
    err = capsys.readouterr().err
    assert (
        err
        == "slm-server compare: error: unknown model 'nope'; the server lists: fast, slow, foreign, broken\n"
    )


def test_malformed_eval_file_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "prompt": "p", "expected": "x", "scoring": "exact"}\n{"id": "b"\n', encoding="utf-8"
    )
    code, _ = run_quietly(
        parse("--eval", str(bad), "--url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "o"))
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"slm-server compare: error: {bad}:2: invalid JSON")
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()  # the eval file is checked before anything else


def test_unreachable_server_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _ = run_quietly(parse("--url", f"http://127.0.0.1:{port}/v1", "--out", str(tmp_path)))
    assert code == 1
    assert "cannot reach the server at http://127.0.0.1:" in capsys.readouterr().err


def test_defaults_and_environment(
    monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    args = parse()
    assert (args.url, args.api_key, args.models, args.eval, args.limit) == (None, None, None, None, None)
    assert (args.out, args.max_tokens, args.repeats, args.warmup) == (Path("compare-out"), 128, 1, 1)
    monkeypatch.setenv("SLM_URL", fake_openai.url)
    monkeypatch.chdir(tmp_path)
    fake_openai.listed = fake_openai.listed[:1]
    code, _ = run_quietly(parse("--limit", "1"))
    assert code == 0 and (tmp_path / "compare-out" / "results.json").exists()


@pytest.mark.parametrize(
    "argv", [["--limit", "0"], ["--repeats", "x"], ["--models", " , "], ["--warmup", "-1"]]
)
def test_bad_option_values_are_refused_by_argparse(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    assert caught.value.code == 2


def test_choose_models() -> None:
    assert choose_models(["a", "b"], None) == ["a", "b"]
    assert choose_models(["a", "b"], ["b", "b"]) == ["b"]


def test_api_key_is_sent(fake_openai: FakeOpenAI) -> None:
    with make_client(fake_openai.url, "sk-test", 10) as client:
        assert isinstance(client, openai.OpenAI) and client.api_key == "sk-test"


def test_warmup_is_short_and_untimed(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    code, _ = run_quietly(
        parse("--url", fake_openai.url, "--models", "fast", "--limit", "1", "--out", str(tmp_path))
    )
    assert code == 0
    assert [r["max_tokens"] for r in fake_openai.requests] == [4, 128]
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert [r["item_id"] for r in doc["requests"]] == [load_eval_set().items[0].id]


def test_interrupt_writes_partial_results(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    seen: list[str] = []

    def progress(line: str) -> None:
        seen.append(line)
        if "item 3/" in line:
            raise KeyboardInterrupt

    args = parse("--url", fake_openai.url, "--models", "fast,slow", "--limit", "5", "--out", str(tmp_path))
    assert run(args, progress=progress) == 130
    assert "interrupted: writing the partial results" in seen
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["meta"]["interrupted"] is True
    assert [m["model"] for m in doc["models"]] == ["fast"] and len(doc["requests"]) == 3
    assert "(interrupted: partial results)" in (tmp_path / "report.md").read_text(encoding="utf-8")


def test_the_command_prints_no_line_per_http_request(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """`slm-server compare` at the default INFO level: the openai client's HTTP loggers (httpx, or httpx2 in
    newer clients) print nothing between compare's own lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")} | {"SLM_LOG_LEVEL": "INFO"}
    result = subprocess.run([sys.executable, "-m", "server", "compare", "--url", fake_openai.url, "--models", "fast",
                             "--limit", "2", "--repeats", "1", "--out", str(tmp_path / "out")], env=env,
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "results.json").is_file()
    assert "HTTP Request" not in result.stdout + result.stderr, result.stdout + result.stderr
