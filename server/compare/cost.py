"""What a request costs, in USD, from the registry's prices and the measured times.

    hosted   tokens x price: `input_price_per_million` and `output_price_per_million` on the registry
             entry, else litellm's price table (`litellm.model_cost`, read only when an entry needs it)
             for its `litellm_model`
    local    the machine's price per hour (`--cpu-hour-price`, or `--gpu-hour-price` for an entry that
             offloads layers to a GPU) x the request's measured total time: the machine is taken to be
             busy with that one request for that long (sequential runs measure exactly that)
    router   priced as the model that served each request (the `x-slm-model` header)

A model with no price has no cost (None), never a cost of 0. The report's figure is the mean cost
of one request of the run times 1,000: what 1,000 requests like this evaluation set's cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from server.compare.runner import RequestResult
from server.registry import HostedModel, LocalModel, Registry

MS_PER_HOUR = 3_600_000.0
PER_MILLION = 1_000_000.0
CostMap = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Price:
    input_per_million: float | None = None
    output_per_million: float | None = None
    per_hour: float | None = None
    source: str = ""

    def request_cost(
        self, prompt_tokens: int | None, completion_tokens: int | None, total_ms: float | None
    ) -> float | None:
        if self.per_hour is not None:
            return None if total_ms is None else self.per_hour * total_ms / MS_PER_HOUR
        if self.input_per_million is None or self.output_per_million is None:
            return None
        if prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / PER_MILLION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def litellm_cost_map() -> CostMap:
    """litellm's price table, imported offline (a slow import: only called when a price is missing)."""
    from server.backends.upstream import load_litellm

    cost_map: CostMap = load_litellm().model_cost
    return cost_map


def litellm_price(litellm_model: str, cost_map: CostMap) -> Price | None:
    """The per-token prices litellm knows for `openai/gpt-4o-mini` (also looked up as `gpt-4o-mini`)."""
    for key in (litellm_model, litellm_model.split("/", 1)[-1]):
        entry = cost_map.get(key)
        if entry is None:
            continue
        prompt, completion = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if isinstance(prompt, int | float) and isinstance(completion, int | float):
            return Price(prompt * PER_MILLION, completion * PER_MILLION, source=f"litellm:{key}")
    return None


@dataclass(frozen=True)
class PriceBook:
    """Prices by model name (canonical names and aliases alike)."""

    prices: Mapping[str, Price]

    def price(self, name: str | None) -> Price | None:
        return self.prices.get(name) if name is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {name: price.to_dict() for name, price in self.prices.items()}


def build_price_book(
    registry: Registry | None,
    *,
    cpu_hour: float | None = None,
    gpu_hour: float | None = None,
    cost_map: Callable[[], CostMap] = litellm_cost_map,
) -> PriceBook:
    if registry is None:
        return PriceBook({})
    prices: dict[str, Price] = {}
    loaded: list[CostMap] = []

    def table() -> CostMap:
        if not loaded:
            loaded.append(cost_map())
        return loaded[0]

    for name, entry in registry.models.items():
        price: Price | None = None
        if isinstance(entry, LocalModel):
            on_gpu = entry.n_gpu_layers != 0
            per_hour = gpu_hour if on_gpu else cpu_hour
            if per_hour is not None:
                price = Price(per_hour=per_hour, source="gpu-hour" if on_gpu else "cpu-hour")
        elif isinstance(entry, HostedModel):
            if entry.input_price_per_million is not None and entry.output_price_per_million is not None:
                price = Price(entry.input_price_per_million, entry.output_price_per_million, source="registry")
            else:
                price = litellm_price(entry.litellm_model, table())
        if price is not None:
            for alias in (name, *entry.aliases):
                prices[alias] = price
    return PriceBook(prices)


def apply_costs(book: PriceBook, results: Iterable[RequestResult]) -> None:
    """Set `cost` on each result, priced as the model that served it (else the one asked)."""
    for result in results:
        price = book.price(result.served_by) or book.price(result.model)
        if price is not None and result.error is None:
            result.cost = price.request_cost(result.prompt_tokens, result.completion_tokens, result.total_ms)


def cost_per_thousand(costs: Sequence[float | None]) -> float | None:
    """1,000 x the mean cost of one request; None when any request has no price (a partial sum misleads)."""
    if not costs or any(c is None for c in costs):
        return None
    known = [c for c in costs if c is not None]
    return 1000.0 * sum(known) / len(known)
