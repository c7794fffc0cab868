"""What requests cost in USD: prices from the maintained ``genai-prices`` package, overridable per workflow.

A model is priced by its exact id in the workflow's ``pricing:``, then its
family there (opus, sonnet, haiku, fable, mythos), then ``genai-prices``, which
knows each model's input, output, cache read and cache write prices, its long
prompt tiers, the Message Batches discount and the date a price changed. Every
request is priced on its own, as the API bills it (a tier applies per request),
at the time it was made. A model nothing prices costs ``None`` (shown as
unknown), never 0.

``genai-prices`` is imported on the first price asked for, so commands that
never price anything (validate, compile) don't pay for loading its tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cache
from typing import Any

from .runners import AttemptRecord, Usage
from .workflow import Price

__all__ = ["FAMILIES", "Pricing", "cheapest", "estimate", "family", "has_price", "token_range", "worst_case"]

FAMILIES = ("opus", "sonnet", "haiku", "fable", "mythos")
PROVIDER = "anthropic"
BATCH_SHARE = 0.5  # the Message Batches API bills half the standard prices (a workflow's price may say otherwise)


def family(model: str) -> str | None:
    for name in FAMILIES:
        if name in model:
            return name
    return None


def _override(model: str, overrides: Mapping[str, Price] | None) -> Price | None:
    if not overrides:
        return None
    if model in overrides:
        return overrides[model]
    fam = family(model)
    return overrides.get(fam) if fam is not None else None


@cache
def _listed(model: str) -> bool:
    try:
        _calc(Usage(input_tokens=1), model, False, None)
    except LookupError:
        return False
    return True


def has_price(model: str, overrides: Mapping[str, Price] | None = None) -> bool:
    """Whether requests to ``model`` can be priced (by the workflow or by genai-prices)."""
    return _override(model, overrides) is not None or _listed(model)


def _calc(usage: Usage, model: str, batch: bool, when: float | None) -> float:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    # genai-prices counts cache reads and writes inside input_tokens; the Messages API reports them apart.
    counted = PriceUsage(
        input_tokens=usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_tokens=usage.output_tokens,
    )
    timestamp = dt.datetime.fromtimestamp(when, dt.UTC) if when is not None else None
    context: Any = {"processing": "batch"} if batch else None
    price = calc_price(
        counted, model_ref=model, provider_id=PROVIDER, genai_request_timestamp=timestamp, price_context=context
    )
    return float(price.total_price)


def estimate(
    usage: Usage,
    model: str,
    overrides: Mapping[str, Price] | None = None,
    *,
    batch: bool = False,
    when: float | None = None,
) -> float | None:
    """USD for one request's ``usage`` on ``model`` (made at ``when``, epoch seconds; through the Batches API
    with ``batch``); None when no price is known."""
    price = _override(model, overrides)
    if price is None:
        try:
            return round(_calc(usage, model, batch, when), 6)
        except LookupError:
            return None
    cache_read = price.cache_read if price.cache_read is not None else price.input * 0.1
    cache_write = price.cache_write if price.cache_write is not None else price.input * 1.25
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * cache_read
        + usage.cache_write_tokens * cache_write
    )
    share = (price.batch if price.batch is not None else BATCH_SHARE) if batch else 1.0
    return round(total * share / 1_000_000, 6)


def worst_case(
    model: str, input_tokens: int, max_output: int, overrides: Mapping[str, Price] | None = None, *, batch: bool = False
) -> float | None:
    """The most a request of ``input_tokens`` that may write ``max_output`` tokens can cost: every input token
    at the dearer of the input and cache-write prices, every output token written."""
    uncached = estimate(Usage(input_tokens=input_tokens, output_tokens=max_output), model, overrides, batch=batch)
    written = estimate(Usage(cache_write_tokens=input_tokens, output_tokens=max_output), model, overrides, batch=batch)
    if uncached is None or written is None:
        return None
    return max(uncached, written)


def cheapest(model: str, input_tokens: int, overrides: Mapping[str, Price] | None = None) -> float | None:
    """The least a request of ``input_tokens`` can cost: all of it read from the prompt cache, nothing written."""
    return estimate(Usage(cache_read_tokens=input_tokens), model, overrides)


class Pricing:
    """A run's prices (the workflow's ``pricing:`` over genai-prices), as the engine asks for them."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self.overrides = dict(overrides or {})

    def cost(self, attempt: AttemptRecord, model: str) -> float | None:
        return estimate(attempt.usage, model, self.overrides, batch=attempt.batch, when=attempt.started)

    def worst(self, model: str, input_tokens: int, max_output: int, batch: bool) -> float | None:
        return worst_case(model, input_tokens, max_output, self.overrides, batch=batch)

    def least(self, model: str, input_tokens: int) -> float | None:
        return cheapest(model, input_tokens, self.overrides)


def token_range(chars: int) -> tuple[int, int]:
    """Tokens a text of ``chars`` characters is likely to take: a low and a high guess.

    English prose runs about four characters a token and code about three; the
    bounds leave room on both sides, so a budget check on the low end never
    stops a stage that would have fitted.
    """
    return chars // 5, chars // 3 + 1
