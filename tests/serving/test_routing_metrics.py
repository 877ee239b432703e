"""The routing counters exist before any traffic and follow the registry through a hot reload.

`slm_fallbacks_total{model, to, reason}` is declared at zero for each hop a request's plan can take
(and each reason an error that falls through can give); `slm_router_decisions_total` for each
router target. A reload that removes a model removes its series. Real gateway, real Redis; the
models are never asked anything (no worker is needed to be listed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.errors import InvalidRequestError, SlmError
from server.metrics import FALLBACK_REASONS
from server.registry import load_registry
from server.serving.dispatch import RETRYABLE_STATUSES
from server.settings import Settings
from tests.conftest import SMOLLM2, wait_until
from tests.gateway_thread import running_gateway
from tests.prometheus_text import Samples, scrape

BEFORE = f"""
models:
  small:
    gguf: {SMOLLM2}
    fallbacks: [medium]
  medium:
    gguf: {SMOLLM2}
  other:
    gguf: {SMOLLM2}
  auto:
    backend: router
    targets: [small, other]
"""
# `small` removed; the router keeps `other` only
AFTER = f"""
models:
  medium:
    gguf: {SMOLLM2}
  other:
    gguf: {SMOLLM2}
  auto:
    backend: router
    targets: [other]
"""


def error_classes() -> list[type[SlmError]]:
    found: list[type[SlmError]] = [SlmError]
    for cls in found:
        found += [sub for sub in cls.__subclasses__() if sub not in found]
    return found


def test_fallback_reasons_are_exactly_the_metric_types_of_errors_that_fall_through() -> None:
    falls = {cls.metric_type for cls in error_classes()
             if cls.status in RETRYABLE_STATUSES or issubclass(cls, InvalidRequestError)}
    assert len(FALLBACK_REASONS) == len(set(FALLBACK_REASONS))
    assert set(FALLBACK_REASONS) == falls


def hops(samples: Samples) -> set[tuple[str, str, str]]:
    """(model, to, reason) of every slm_fallbacks_total sample, each checked to be 0."""
    found = set()
    for (name, labels), value in samples.items():
        if name == "slm_fallbacks_total":
            label = dict(labels)
            assert value == 0, (label, value)
            found.add((label["model"], label["to"], label["reason"]))
    return found


def decisions(samples: Samples) -> set[tuple[str, str]]:
    return {(dict(labels)["router"], dict(labels)["model"]) for (name, labels) in samples
            if name == "slm_router_decisions_total"}


@dataclass
class Gateway:
    url: str
    registry_path: Path


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path) -> Iterator[Gateway]:
    path = tmp_path / "model_registry.yaml"
    path.write_text(BEFORE)
    settings = Settings(redis_url=redis_url, registry=path, reload_interval_s=0.1)
    with running_gateway(settings, load_registry(path)) as url:
        yield Gateway(url, path)


@pytest.mark.integration
def test_fallback_series_are_at_zero_before_traffic_and_leave_with_their_model(gateway: Gateway) -> None:
    samples = scrape(gateway.url)
    # small -> medium (its fallback); the router's plans: small, medium, other / other, small, medium
    expected = {("small", "medium"), ("medium", "other"), ("other", "small")}
    assert hops(samples) == {(model, to, reason) for model, to in expected for reason in FALLBACK_REASONS}
    assert decisions(samples) == {("auto", "small"), ("auto", "other")}

    gateway.registry_path.write_text(AFTER)

    def reloaded() -> bool:
        found = scrape(gateway.url)
        return found.get(("slm_registry_reloads_total", frozenset({("result", "success")}))) == 1 \
            and decisions(found) == {("auto", "other")}

    wait_until(reloaded, timeout_s=20, what="the reload applied and the router's decisions for small dropped")
    samples = scrape(gateway.url)
    assert hops(samples) == set()  # no plan passes a request on any more
    assert decisions(samples) == {("auto", "other")}
    listed = {dict(labels)["model"] for (name, labels) in samples if name == "slm_model_info"}
    assert listed == {"medium", "other", "auto"}
