"""`slm_upstream_up`: on /metrics from start-up for every hosted model, kept through a reload that
leaves the model as it was, dropped with the model."""

from __future__ import annotations

from server.metrics import Metrics


def up(metrics: Metrics, model: str) -> float | None:
    return metrics.registry.get_sample_value("slm_upstream_up", {"model": model})


def test_a_hosted_model_is_presumed_up_from_start_and_its_state_survives_a_redeclare() -> None:
    metrics = Metrics()
    metrics.declare_model("big", "hosted", file="openai/x", quant="", n_ctx=None)
    metrics.declare_model("small", "local", file="a.gguf", quant="Q4", n_ctx=2048)
    assert up(metrics, "big") == 1.0
    assert up(metrics, "small") is None  # local models have workers, not an upstream
    metrics.upstream_up.labels("big").set(0)  # its circuit opened
    metrics.declare_model("big", "hosted", file="openai/x", quant="", n_ctx=None)  # a reload, entry unchanged
    assert up(metrics, "big") == 0.0
    metrics.forget_model("big")
    assert up(metrics, "big") is None
