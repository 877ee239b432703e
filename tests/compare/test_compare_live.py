"""`slm-server compare` against the real server, with smollm2 and gemma3-270m (small subset)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from server.compare import command
from server.compare.evalset import load_eval_set

MODELS = ["smollm2", "gemma3-270m"]
LIMIT = 4


@pytest.mark.integration
def test_compare_two_local_models(live_server_url: str, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "compare-out"
    argv = [
        "--url",
        live_server_url + "/v1",
        "--models",
        ",".join(MODELS),
        "--limit",
        str(LIMIT),
        "--max-tokens",
        "48",
    ]
    progress: list[str] = []
    code = command.run(parser.parse_args([*argv, "--out", str(out)]), progress=progress.append)
    assert code == 0, "\n".join(progress)
    assert any(line.startswith(f"[2/2] gemma3-270m: item {LIMIT}/{LIMIT}") for line in progress)

    png = out / "compare.png"
    with Image.open(png) as img:
        img.verify()
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 400
        assert img.info["Description"] == "models: " + ", ".join(MODELS)  # both models are plotted

    doc: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [m["model"] for m in doc["models"]] == MODELS
    assert len(doc["requests"]) == len(MODELS) * LIMIT
    for request in doc["requests"]:
        assert request["error"] is None, request
        assert request["timing_source"] == "server"
        assert request["served_by"] == request["model"]
        assert 0 <= request["score"] <= 1
        assert request["prompt_ms"] > 0 and request["predicted_ms"] >= 0
        # total = prompt evaluation + generation, within measurement noise
        assert request["total_ms"] == pytest.approx(
            request["prompt_ms"] + request["predicted_ms"], rel=0.02, abs=5
        )
        # the server cannot finish before the client saw the end of the stream
        assert request["total_ms"] <= request["client_total_ms"] + 5
        assert request["client_ttft_ms"] <= request["client_total_ms"]
    for model in doc["models"]:
        assert model["ok"] == LIMIT and model["skipped"] is None
        assert model["total_ms"]["p25"] <= model["total_ms"]["median"] <= model["total_ms"]["p75"]
        assert model["quality_se"] >= 0 and 0 <= model["quality"] <= 1

    report = (out / "report.md").read_text(encoding="utf-8")
    for model in MODELS:
        assert f"| {model} | " in report

    assert load_eval_set().items[0].id in report
