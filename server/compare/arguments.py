"""`slm-server compare`'s options, apart from the command so that building the CLI's parser imports
nothing heavy (the chart and the HTTP client load only when `compare` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_OUT = "compare-out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run an evaluation set through the running server for each model and chart median total "
        "time (prompt evaluation + generation) against answer quality."
    )
    parser.add_argument("--url", help=f"server base URL (default: $SLM_URL or {DEFAULT_URL})")
    parser.add_argument("--api-key", help="API key (default: $SLM_API_KEY or 'none')")
    parser.add_argument("--models", type=_model_list, help="comma-separated model ids (default: all listed)")
    parser.add_argument(
        "--eval", type=Path, metavar="FILE.jsonl", help="evaluation set (default: the built-in set)"
    )
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output folder ({DEFAULT_OUT})")
    parser.add_argument("--limit", type=_positive_int, metavar="N", help="only the first N items")
    parser.add_argument("--max-tokens", type=_positive_int, default=128, help="per answer (128)")
    parser.add_argument("--repeats", type=_positive_int, default=1, help="runs of each item (1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0)")
    parser.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed requests per model (1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request (300)")
    judging = parser.add_argument_group("judging (MT-Bench style)")
    judging.add_argument(
        "--judge", metavar="MODEL", help="a model the server lists (typically hosted) that rates each answer 1-10"
    )
    judging.add_argument(
        "--baseline", metavar="MODEL",
        help="compare every other model with this one, pairwise, both orders asked (needs --judge)",
    )  # fmt: skip
    judging.add_argument("--judge-max-tokens", type=_positive_int, default=512, help="per verdict (512)")
    costs = parser.add_argument_group(
        "cost", "prices come from the registry (the global --registry, else $SLM_REGISTRY, else "
        "./model_registry.yaml if present): hosted entries' prices, else litellm's price table",
    )  # fmt: skip
    costs.add_argument("--cpu-hour-price", type=_price, metavar="USD", help="a local CPU machine's price per hour")
    costs.add_argument("--gpu-hour-price", type=_price, metavar="USD", help="a local GPU machine's price per hour")


def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text}")
    return value


def _model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give at least one model id")
    return models


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative; got {text}")
    return value
