"""Estimated cost in USD: a small price table per model family, overridable in the workflow.

Prices are USD per million tokens. A model is priced by its exact id in the
workflow's ``pricing:``, then its family there (opus, sonnet, haiku), then the
built-in table. A model nothing prices costs ``None`` (shown as unknown), never 0.
"""

from __future__ import annotations

from collections.abc import Mapping

from .runners import Usage
from .workflow import Price

__all__ = ["DEFAULT_PRICES", "estimate", "estimate_range", "family", "price_for", "token_range"]

# Anthropic's list prices by family (input, output); cache reads cost 10% and cache writes 125%
# of input. They are estimates: set `pricing:` in the workflow for what your account pays.
DEFAULT_PRICES: dict[str, Price] = {
    "opus": Price(input=5.0, output=25.0),
    "sonnet": Price(input=3.0, output=15.0),
    "haiku": Price(input=1.0, output=5.0),
}


def family(model: str) -> str | None:
    for name in ("opus", "sonnet", "haiku"):
        if name in model:
            return name
    return None


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    overrides = overrides or {}
    fam = family(model)
    if model in overrides:
        return overrides[model]
    if fam is not None and fam in overrides:
        return overrides[fam]
    return DEFAULT_PRICES.get(fam) if fam else None


def estimate(usage: Usage, model: str, overrides: Mapping[str, Price] | None = None) -> float | None:
    """USD for ``usage`` on ``model``; None when no price is known."""
    price = price_for(model, overrides)
    if price is None:
        return None
    cache_read = price.cache_read if price.cache_read is not None else price.input * 0.1
    cache_write = price.cache_write if price.cache_write is not None else price.input * 1.25
    total = (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_tokens * cache_read
        + usage.cache_write_tokens * cache_write
    )
    return round(total / 1_000_000, 6)


def token_range(chars: int) -> tuple[int, int]:
    """Tokens a text of ``chars`` characters is likely to take: a low and a high guess.

    English prose runs about four characters a token and code about three; the
    bounds leave room on both sides, so a budget check on the low end never
    stops a stage that would have fitted.
    """
    return chars // 5, chars // 3 + 1


def estimate_range(
    input_chars: int, max_output: int, model: str, overrides: Mapping[str, Price] | None = None
) -> tuple[float, float] | None:
    """USD a request is likely to cost: (input only at the low guess, input at the high guess plus every
    output token it may write); None when no price is known."""
    low_in, high_in = token_range(input_chars)
    low = estimate(Usage(input_tokens=low_in), model, overrides)
    high = estimate(Usage(input_tokens=high_in, output_tokens=max_output), model, overrides)
    return None if low is None or high is None else (low, high)
