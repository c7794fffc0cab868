"""The seam between the engine and whatever executes a stage.

A runner turns a ``StageRequest`` (system prompt, user message, model) into a
``StageResult``; it reports every attempt it makes (an HTTP request, say) as it
goes, so tokens spent on failed, retried or cancelled attempts are counted too.
The engine knows only this Protocol, and ``registry`` says what each kind can do
and makes it. Runners: ``anthropic`` (the Messages API,
with tools in a confined workspace; imported only when used), ``shell`` (a
``run:`` command), ``agent_cli`` (the Claude Code and OpenCode CLIs) and
``offline`` (scripted replies, no network).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RunnerError

__all__ = [
    "TRACEPARENT",
    "AttemptRecord",
    "AttemptReporter",
    "BudgetExhausted",
    "Meter",
    "Runner",
    "ShellCommand",
    "StageFailure",
    "StageRequest",
    "StageResult",
    "Usage",
]

# The W3C trace context of the stage running in this task, when the run is traced: an agent CLI gets it as
# TRACEPARENT, so its own telemetry joins the run's trace. Set by the trace listener as the stage starts.
TRACEPARENT: ContextVar[str | None] = ContextVar("TRACEPARENT", default=None)


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
class ShellCommand:
    """A ``run:`` stage's command: run in ``cwd`` (relative to the workspace) with ``env`` on top of a
    scrubbed environment."""

    command: str
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = "."


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
    # The JSON Schema the reply must match: the audit verdict's, or the stage's output_schema; None for free text.
    output_schema: dict[str, Any] | None = None
    # The audit stage: its reply is the verdict.
    verdict: bool = False
    # Text every agent of the workflow shares, sent before ``system`` (the agent's own) so it is cached across agents.
    brief: str = ""
    # Reasoning depth and thinking, as the workflow sets them for the agent (None: the model's default).
    effort: str | None = None
    thinking: str | None = None
    # Send through the Message Batches API (half price, results within hours).
    batch: bool = False
    # Tools the model may call in the workspace (read, edit, search, bash), and its turn limit.
    tools: tuple[str, ...] = ()
    max_turns: int = 1
    # What the bash tool may run: allowed command prefixes, shell syntax, seconds per command.
    bash: tuple[str, ...] = ()
    shell: bool = False
    bash_timeout: float = 120.0
    # A run: stage's command (then there is no model, system or prompt).
    command: ShellCommand | None = None
    # Where its commands may write (the stage's write scope, as patterns) and whether they may reach the network.
    writes: tuple[str, ...] = ("**",)
    network: bool = False

    def settings(self) -> dict[str, Any]:
        """What the request does besides its text, for its fingerprint (empty for a plain text request)."""
        out: dict[str, Any] = {}
        if self.output_schema is not None:
            out["output_schema"] = self.output_schema
        if self.verdict:
            out["verdict"] = True
        if self.effort is not None:
            out["effort"] = self.effort
        if self.thinking is not None:
            out["thinking"] = self.thinking
        if self.tools:
            out["tools"] = list(self.tools)
            out["max_turns"] = self.max_turns
            if "bash" in self.tools:
                out["bash"] = [list(self.bash), self.shell, self.bash_timeout]
        if self.command is not None:
            out["command"] = [self.command.command, [list(pair) for pair in self.command.env], self.command.cwd]
        if self.network and (self.command is not None or "bash" in self.tools):
            out["network"] = True
        return out


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
    batch: bool = False  # sent through the Message Batches API (billed at the batch price)
    worker: str | None = None  # the Temporal worker that made it (None: this process)


AttemptReporter = Callable[[AttemptRecord], None]


@dataclass
class Meter:
    """What the run hands a runner for one stage, besides the request: where each attempt is reported
    (``meter(attempt)``), and, when a budget is in force, ``reserve`` to call before each paid request
    with its input tokens as counted and its most output tokens: it returns once the worst case fits
    the budget (waiting for requests in flight to settle) or raises ``BudgetExhausted``; the next
    reported attempt settles the reservation. ``batched`` records a submitted batch at once, so an
    interrupted run can collect it; ``batch`` is one an earlier run submitted for this very request.
    ``hold`` is for a try that runs where ``reserve`` can't be called (another process): it holds all the
    room the budgets leave, once no other request holds any, and returns it as the try's allowance (USD,
    ``inf`` when no budget is in force); the try's first reported attempt settles the hold. ``tool`` is told of
    each tool call a tool loop made: its name, when it started, how long it took, and its error if it failed."""

    report: AttemptReporter
    reserve: Callable[[int, int, bool], Awaitable[None]] | None = None
    batched: Callable[[str, str], None] | None = None
    batch: tuple[str, str] | None = None  # (batch id, custom id)
    hold: Callable[[], Awaitable[float]] | None = None
    tool: Callable[[str, float, float, str | None], None] | None = None

    def __call__(self, attempt: AttemptRecord) -> None:
        self.report(attempt)


@dataclass(frozen=True)
class StageResult:
    """A stage's reply: its text and, for structured requests, the parsed data."""

    output: str
    data: dict[str, Any] | None = None
    stop_reason: str | None = None


class StageFailure(RunnerError):
    """The runner gave up on a stage (after its retries); the message says why."""


class BudgetExhausted(RunnerError):
    """The next request's worst case does not fit the budget, and no request in flight can free room."""


class Runner(Protocol):
    async def run(self, request: StageRequest, report: AttemptReporter) -> StageResult:
        """Run one stage. Call ``report`` once per attempt, failed ones included."""
        ...
