"""Cost: the arithmetic against hand-computed figures, where prices come from, and the command's figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from server.compare.command import add_arguments, run
from server.compare.cost import Price, build_price_book, cost_per_thousand, litellm_cost_map, litellm_price
from server.errors import RegistryError
from server.registry import parse_registry

if TYPE_CHECKING:
    from conftest import FakeOpenAI


def test_token_price_arithmetic() -> None:
    # 1,000 prompt tokens at $0.15/M + 200 completion tokens at $0.60/M = $0.00015 + $0.00012
    price = Price(input_per_million=0.15, output_per_million=0.60)
    assert price.request_cost(1000, 200, 5000.0) == pytest.approx(0.00027)
    assert price.request_cost(None, 200, 5000.0) is None


def test_per_hour_arithmetic() -> None:
    # $0.50 an hour, 1.8 s of the machine: 0.5 x 1.8 / 3600 = $0.00025
    price = Price(per_hour=0.50)
    assert price.request_cost(1000, 200, 1800.0) == pytest.approx(0.00025)
    assert price.request_cost(1000, 200, None) is None


def test_cost_per_thousand_requests() -> None:
    assert cost_per_thousand([0.00027, 0.00025]) == pytest.approx(0.26)  # 1000 x mean
    assert cost_per_thousand([0.00027, None]) is None  # a partial sum would mislead
    assert cost_per_thousand([]) is None


REGISTRY = {
    "models": {
        "cpu-model": {"gguf": "a.gguf", "aliases": ["small"]},
        "gpu-model": {"gguf": "b.gguf", "n_gpu_layers": -1},
        "priced": {"backend": "hosted", "litellm_model": "openai/custom", "input_price_per_million": 2.0,
                   "output_price_per_million": 8.0},
        "known": {"backend": "hosted", "litellm_model": "openai/gpt-4o-mini"},
        "unknown": {"backend": "hosted", "litellm_model": "acme/nothing"},
        "auto": {"backend": "router", "targets": ["cpu-model", "priced"]},
    }
}  # fmt: skip


def test_price_book_from_the_registry() -> None:
    table = {"gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07}}
    loads: list[int] = []

    def cost_map() -> dict[str, dict[str, Any]]:
        loads.append(1)
        return table

    book = build_price_book(parse_registry(REGISTRY), cpu_hour=0.04, gpu_hour=2.5, cost_map=cost_map)
    assert book.price("cpu-model") == Price(per_hour=0.04, source="cpu-hour")
    assert book.price("small") == book.price("cpu-model")  # aliases priced too
    assert book.price("gpu-model") == Price(per_hour=2.5, source="gpu-hour")
    assert book.price("priced") == Price(2.0, 8.0, source="registry")
    known = book.price("known")
    assert known is not None and known.source == "litellm:gpt-4o-mini"
    assert (known.input_per_million, known.output_per_million) == pytest.approx((0.15, 0.60))
    assert book.price("unknown") is None and book.price("auto") is None
    assert loads == [1]  # the table is read once, and only because an entry had no price


def test_no_table_read_when_every_hosted_entry_is_priced() -> None:
    registry = parse_registry({"models": {k: v for k, v in REGISTRY["models"].items() if k in ("cpu-model", "priced")}})

    def cost_map() -> dict[str, dict[str, Any]]:
        raise AssertionError("litellm's table must not be loaded")

    book = build_price_book(registry, cost_map=cost_map)
    assert book.price("cpu-model") is None  # no --cpu-hour-price: no cost, never 0


def test_litellm_price_table_knows_a_common_model() -> None:
    price = litellm_price("openai/gpt-4o-mini", litellm_cost_map())
    assert price is not None and price.input_per_million is not None and price.output_per_million is not None
    assert 0 < price.input_per_million < price.output_per_million


def test_price_fields_are_validated() -> None:
    entry = {"backend": "hosted", "litellm_model": "openai/x", "input_price_per_million": -1}
    with pytest.raises(RegistryError, match="input_price_per_million"):
        parse_registry({"models": {"h": entry}})


def test_command_reports_cost_per_thousand_requests(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"models": {
        "fast": {"gguf": "fast.gguf"},
        "slow": {"backend": "hosted", "litellm_model": "openai/x", "input_price_per_million": 1.0,
                 "output_price_per_million": 2.0},
    }}), encoding="utf-8")  # fmt: skip
    fake_openai.answers["slow"] = lambda _: "B, for sure"  # 11 characters: 4 chunks of 3
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--url", fake_openai.url, "--models", "fast,slow", "--limit", "3", "--out", str(out),
                              "--cpu-hour-price", "0.36"])  # fmt: skip
    args.registry = registry  # the global option of `slm-server`
    assert run(args, progress=lambda _: None) == 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    fast, slow = doc["models"]
    # fast: $0.36 an hour x 50 ms (the fake's total_ms) = $0.000005 a request -> $0.005 per 1,000
    assert fast["cost_per_1000"] == pytest.approx(0.005)
    # slow: 11 prompt tokens x $1/M + 4 completion tokens x $2/M = $0.000019 -> $0.019 per 1,000
    assert slow["cost_per_1000"] == pytest.approx(0.019)
    assert all(r["cost"] is not None for r in doc["requests"])
    assert doc["prices"]["slow"]["source"] == "registry"
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| fast | $0.36 per hour (cpu-hour) x measured time | 0.0050 |" in report
    assert "| slow | $1 / $2 per M in/out tokens (registry) | 0.0190 |" in report
    assert (out / "cost.png").is_file() and "![cost against quality](cost.png)" in report
