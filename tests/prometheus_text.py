"""Read a live `/metrics` page into samples, and one sample's value out of them."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of `{url}/metrics`, keyed by name and exact label set."""
    out: Samples = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample with exactly these labels; 0 when it is not there (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
