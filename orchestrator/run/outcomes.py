"""What the engine takes and gives, and the small Protocols of those it asks.

Options and the per-stage input (request, input digests, fingerprint) go in;
stage and run outcomes come out. ``Memory`` (may a stage keep its earlier
output?) and ``Gates`` (has a person decided on this output?) are the seams the
run wires to the state folder; the engine knows nothing else about it. The
engine asks them through ``Home``, the one async seam to where the run's
workspace and state folder are: ``LocalHome`` answers in this process, and a
run on Temporal answers from the worker that holds the checkout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..audit import Finding, Verdict
from ..fingerprint import Recalled, gate_fingerprint, request_fingerprint
from ..runners import AttemptRecord, StageRequest, Usage

__all__ = [
    "Decision",
    "EngineOptions",
    "Gates",
    "Guard",
    "Home",
    "Instance",
    "LocalHome",
    "Memory",
    "NoGates",
    "NoGuard",
    "NoMemory",
    "Pricer",
    "Progress",
    "RunOutcome",
    "RunStatus",
    "StageInput",
    "StageOutcome",
    "StageStatus",
]

StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped", "waiting_approval", "interrupted"]
RunStatus = Literal["succeeded", "failed", "interrupted", "waiting_approval", "budget_exceeded", "partial"]


@dataclass(frozen=True)
class EngineOptions:
    max_parallel: int
    stage_timeout: float | None = None  # default for stages without a timeout of their own
    run_id: str = "run"
    task: str = "task"
    budget_usd: float | None = None
    spent_usd: float = 0.0  # spent by earlier parts of this run (a resumed run)
    max_rounds: int = 1
    round: int = 1  # the audit round a resumed run continues in
    approve_all: bool = False
    only: frozenset[str] | None = None  # run just these; keep the others' outputs or leave them be
    resumed: bool = False
    poll_interval: float = 1.0  # how often waiting gates look for a decision while other stages run
    tick: float = 1.0  # the longest the timeout watchdog sleeps between looks (a tenth of the shortest timeout)
    wait_at_gates: bool = False  # with only gates left, wait for their decisions rather than pause the run


@dataclass
class StageOutcome:
    status: StageStatus
    output: str = ""
    data: dict[str, Any] | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    duration: float = 0.0
    fingerprint: str = ""
    reused: bool = False
    conditional: bool = False  # skipped because its ``if`` was false: its dependents still run


@dataclass(repr=False)
class RunOutcome:
    status: RunStatus
    stages: dict[str, StageOutcome]
    verdict: Verdict | None
    usage: Usage
    cost_usd: float | None
    duration: float
    note: str = ""
    waiting: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Short: asyncio prints a finished task's result in its repr, and a repr of every stage's output would
        # cost milliseconds on a big run (asyncio.run asks for one as it restores its signal handler).
        return f"RunOutcome(status={self.status!r}, stages={len(self.stages)}, cost_usd={self.cost_usd!r})"


@dataclass(frozen=True)
class StageInput:
    """What a stage would send, and the digests of its parts (for "what changed")."""

    request: StageRequest | None  # None for an approval gate: no agent runs it
    inputs: Mapping[str, str]
    fingerprint: str
    min_tokens: int = 0  # the fewest input tokens the request can send, for the budget's check before it starts
    # For a stage that acts in the workspace: its input as recorded once it has acted (its fingerprint over
    # the workspace it left), so that a rerun with nothing changed since keeps it.
    settle: Callable[[], StageInput] | None = None

    @classmethod
    def of(cls, request: StageRequest, inputs: Mapping[str, str] | None = None, min_tokens: int = 0) -> StageInput:
        return cls(request, inputs or {}, request_fingerprint(request), min_tokens)

    @classmethod
    def gate(cls, inputs: Mapping[str, str]) -> StageInput:
        return cls(None, inputs, gate_fingerprint(inputs))


@dataclass(frozen=True)
class Decision:
    approved: bool
    note: str = ""
    by: str = ""


@dataclass(frozen=True)
class Instance:
    """One instance of a foreach stage: ``<parent>[<key>]`` working on ``item``."""

    parent: str
    index: int
    key: str
    item: Any


@dataclass
class Progress:
    """What the request builder may read: outcomes so far, findings sent back, gate decisions,
    the instances of foreach stages, and why a stage's last try broke its contract."""

    outcomes: dict[str, StageOutcome]
    feedback: dict[str, list[Finding]]
    decisions: dict[str, Decision]
    round: int
    instances: dict[str, Instance] = field(default_factory=dict)
    contract: dict[str, str] = field(default_factory=dict)


class Pricer(Protocol):
    """What requests cost, for the ledger and the budget (``cost.Pricing`` is the run's)."""

    def cost(self, attempt: AttemptRecord, model: str) -> float | None:
        """USD of one reported attempt; None when the model has no known price."""
        ...

    def worst(self, model: str, input_tokens: int, max_output: int, batch: bool) -> float | None:
        """The most a request of ``input_tokens`` that may write ``max_output`` tokens can cost."""
        ...

    def least(self, model: str, input_tokens: int) -> float | None:
        """The least a request of ``input_tokens`` can cost (all of it read from the prompt cache)."""
        ...


class Memory(Protocol):
    def recall(self, stage: str, fingerprint: str, inputs: Mapping[str, str], ran: Set[str]) -> Recalled | str: ...


class Gates(Protocol):
    def decision(self, stage: str, fingerprint: str, output_sha256: str) -> Decision | None:
        """A person's decision on this exact output of ``stage``, if one was made."""
        ...


class Guard(Protocol):
    """Checks around a stage that acts on the workspace: its write scope and its output contract."""

    def scope(self, stage: str, instance: Instance | None) -> tuple[str, ...]:
        """The paths ``stage`` (an ``instance`` of a foreach stage, maybe) may change: overlapping scopes never
        run together. Asked before any other question about the stage."""
        ...

    async def before(self, stage: str) -> object:
        """Called as the stage starts; returns a token for ``after`` (a snapshot of the workspace)."""
        ...

    async def after(
        self, stage: str, token: object, output: str, data: dict[str, Any] | None, others: Set[str]
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Check a finished try: its structured output (parsed from ``output`` when the runner gave none) and
        what is wrong (files changed outside the scope, declared outputs missing, data off its schema) or None.
        ``others`` ran at the same time."""
        ...


class NoGuard:
    """No scopes, no contracts."""

    def scope(self, stage: str, instance: Instance | None) -> tuple[str, ...]:
        return ()

    async def before(self, stage: str) -> object:
        return None

    async def after(
        self, stage: str, token: object, output: str, data: dict[str, Any] | None, others: Set[str]
    ) -> tuple[dict[str, Any] | None, str | None]:
        return data, None


class NoMemory:
    """Keeps nothing: every stage runs."""

    def recall(self, stage: str, fingerprint: str, inputs: Mapping[str, str], ran: Set[str]) -> Recalled | str:
        return "not run before"


class NoGates:
    """No decisions: every gate waits."""

    def decision(self, stage: str, fingerprint: str, output_sha256: str) -> Decision | None:
        return None


class Home(Protocol):
    """Where a stage's input, its earlier output and people's decisions come from: the run's home, which holds
    its workspace and state folder. Async, so that a home in another process can answer."""

    async def prepare(self, sid: str, progress: Progress, ran: Set[str]) -> tuple[StageInput, Recalled | str]:
        """What ``sid`` sends now, and its earlier output if it may keep it (else why it runs); ``ran`` are the
        stages this run has run so far. Raises ``OrchestrateError`` when its request can't be made."""
        ...

    async def settled(self, sid: str, stage_input: StageInput) -> StageInput:
        """Its input as recorded once it has acted (see ``StageInput.settle``)."""
        ...

    async def decision(self, sid: str, fingerprint: str, output_sha256: str) -> Decision | None:
        """A person's decision on this exact output of ``sid``, if one was made."""
        ...


class LocalHome:
    """A home in this process: the request builder, the memo and the gates, called directly."""

    def __init__(self, build: Callable[[str, Progress], StageInput], memory: Memory, gates: Gates) -> None:
        self.build = build
        self.memory = memory
        self.gates = gates

    async def prepare(self, sid: str, progress: Progress, ran: Set[str]) -> tuple[StageInput, Recalled | str]:
        stage_input = self.build(sid, progress)
        return stage_input, self.memory.recall(sid, stage_input.fingerprint, stage_input.inputs, ran)

    async def settled(self, sid: str, stage_input: StageInput) -> StageInput:
        if stage_input.settle is None:
            return stage_input
        return await asyncio.to_thread(stage_input.settle)  # the workspace is walked off the loop's thread

    async def decision(self, sid: str, fingerprint: str, output_sha256: str) -> Decision | None:
        return self.gates.decision(sid, fingerprint, output_sha256)
