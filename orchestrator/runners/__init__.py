"""The seam between the engine and whatever executes a stage.

A runner turns a ``StageRequest`` (system prompt, user message, model) into a
``StageResult``; it reports every attempt it makes (an HTTP request, say) as it
goes, so tokens spent on failed, retried or cancelled attempts are counted too.
The engine knows only this Protocol. Runners: ``anthropic`` (the Messages API;
imported only when used) and ``offline`` (scripted replies, no network).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RunnerError

__all__ = [
    "AttemptRecord",
    "AttemptReporter",
    "Runner",
    "StageFailure",
    "StageRequest",
    "StageResult",
    "Usage",
]


@dataclass(slots=True)  # a value: never changed once made (slotted, not frozen, for speed)
class Usage:
    """Tokens of one or more requests, as the API counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True)
class StageRequest:
    """Everything a runner needs for one stage."""

    stage_id: str
    agent: str
    model: str
    system: str
    prompt: str
    max_tokens: int
    task: str
    # The JSON Schema of a structured reply (the audit verdict); None for free text.
    structured: dict[str, Any] | None = None


@dataclass(slots=True)  # never changed once reported (slotted, not frozen, for speed)
class AttemptRecord:
    """One try at a stage: an API request, successful or not."""

    number: int
    started: float
    duration: float
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    status_code: int | None = None
    request_id: str | None = None


AttemptReporter = Callable[[AttemptRecord], None]


@dataclass(frozen=True)
class StageResult:
    """A stage's reply: its text and, for structured requests, the parsed data."""

    output: str
    data: dict[str, Any] | None = None
    stop_reason: str | None = None


class StageFailure(RunnerError):
    """The runner gave up on a stage (after its retries); the message says why."""


class Runner(Protocol):
    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        """Run one stage. Call ``report`` once per attempt, failed ones included."""
        ...
