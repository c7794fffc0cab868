"""Spend that can't overshoot: a budget kept by reserving each request's worst case before it is sent.

Before a paid request, its runner reserves what it can cost at most (its input
as counted, every token of ``max_tokens`` written, at the dearest prices).
The reservation waits while requests in flight hold what the budget lacks, and
fails (``BudgetExhausted``) when nothing is in flight that could free enough.
When the request's attempt is reported, its reservation is replaced by what it
really cost. Spent plus reserved never passes the cap, so neither can spent,
however many stages run at once.

Asyncio only, on the run's loop; no I/O.
"""

from __future__ import annotations

import asyncio

from ..runners import BudgetExhausted

__all__ = ["Purse"]

_SLACK = 1e-9  # prices are rounded to 1e-6 USD: don't refuse a request over float noise


class Purse:
    """A run's budget: ``cap`` USD (None: no limit), ``spent`` so far, ``held`` by requests in flight."""

    def __init__(self, cap: float | None, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent
        self.held = 0.0
        self._changed = asyncio.Event()

    @property
    def limited(self) -> bool:
        return self.cap is not None

    def room(self) -> float:
        return float("inf") if self.cap is None else self.cap - self.spent - self.held

    async def reserve(self, amount: float) -> None:
        """Hold ``amount`` for a request: wait for room, or raise ``BudgetExhausted`` when none can come."""
        if self.cap is None:
            return
        while amount > self.room() + _SLACK:
            if self.held <= _SLACK:
                raise BudgetExhausted(
                    f"the run's budget of ${self.cap:.2f} would be exceeded: ${self.spent:.4f} spent, and the next "
                    f"request may cost up to ${amount:.4f}"
                )
            self._changed.clear()
            await self._changed.wait()
        self.held += amount

    async def hold_rest(self) -> float:
        """Hold all the room left, once no request in flight holds any (a try priced elsewhere); return it."""
        if self.cap is None:
            return float("inf")
        while self.held > _SLACK:
            self._changed.clear()
            await self._changed.wait()
        amount = self.room()
        if amount <= _SLACK:
            raise BudgetExhausted(f"the run's budget of ${self.cap:.2f} is spent: ${self.spent:.4f}")
        self.held += amount
        return amount

    def settle(self, reserved: float, actual: float) -> None:
        """A request ended: release its reservation and count what it cost."""
        self.held = max(0.0, self.held - reserved)
        self.spent += actual
        self._changed.set()

    def add(self, actual: float) -> None:
        """Count spend no reservation covered (a runner that can't reserve, such as an agent CLI)."""
        self.settle(0.0, actual)
