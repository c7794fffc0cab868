"""What happens during a run, as plain events, and the Protocol of those who listen.

Events are never changed once emitted. They are slotted rather than frozen
dataclasses only because a run creates several per stage and frozen ones cost
four times as much to build.

The engine emits events and never prints or writes; the state store, the
console views and the JSON-lines output are listeners. ``to_json`` is the one
serialisation of an event (``events.jsonl`` and ``run --json`` use it); stage
outputs are left out of it, they live in ``stages/<id>.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .runners import AttemptRecord, Usage

__all__ = [
    "ApprovalDecided",
    "ApprovalRequested",
    "AttemptFinished",
    "AuditRound",
    "BatchSubmitted",
    "Event",
    "Listener",
    "RunFinished",
    "RunStarted",
    "StageExpanded",
    "StageFailed",
    "StageNoted",
    "StageReopened",
    "StageRetrying",
    "StageReused",
    "StageSkipped",
    "StageStarted",
    "StageSucceeded",
    "ToolFinished",
    "from_json",
    "to_json",
]


@dataclass(slots=True)
class RunStarted:
    time: float
    run_id: str
    workflow: str
    task: str
    stages: tuple[str, ...]
    max_parallel: int
    resumed: bool = False
    round: int = 1


@dataclass(slots=True)
class StageStarted:
    time: float
    stage: str
    agent: str
    model: str
    reason: str = ""  # why it runs: "not run before", "instructions changed: …", "--force"
    round: int = 1


@dataclass(slots=True)
class StageReused:
    """A stage whose inputs are unchanged since it last succeeded: its output is kept, no request made."""

    time: float
    stage: str
    reason: str
    fingerprint: str
    inputs: dict[str, str]
    output_sha256: str
    from_run: str
    output: str = field(repr=False)
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class StageRetrying:
    """A try of a stage failed and another one follows (the stage's ``retries``)."""

    time: float
    stage: str
    attempt: int  # the try that failed, from 1
    error: str


@dataclass(slots=True)
class AttemptFinished:
    time: float
    stage: str
    attempt: AttemptRecord
    cost_usd: float | None


@dataclass(slots=True)
class ToolFinished:
    """A tool call of a stage's tool loop (for traces; the transcript has its input and result)."""

    time: float
    stage: str
    tool: str
    started: float
    duration: float
    error: str | None = None


@dataclass(slots=True)
class BatchSubmitted:
    """A ``batch: true`` stage's request went into a Message Batch: an interrupted run collects it from there."""

    time: float
    stage: str
    batch_id: str
    custom_id: str
    fingerprint: str  # the request it holds: a changed stage sends a new one


@dataclass(slots=True)
class StageSucceeded:
    time: float
    stage: str
    duration: float
    usage: Usage
    cost_usd: float | None
    output: str = field(repr=False)  # left out of to_json: outputs live in stages/<id>.md
    data: dict[str, Any] | None = None
    fingerprint: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    output_sha256: str = ""


@dataclass(slots=True)
class StageFailed:
    time: float
    stage: str
    duration: float
    error: str
    interrupted: bool = False


@dataclass(slots=True)
class ApprovalRequested:
    """A gate is waiting for a person: ``orchestrate approve|reject TASK STAGE``."""

    time: float
    stage: str
    message: str
    fingerprint: str
    output_sha256: str
    output_file: str | None


@dataclass(slots=True)
class ApprovalDecided:
    time: float
    stage: str
    approved: bool
    note: str
    by: str
    fingerprint: str


@dataclass(slots=True)
class AuditRound:
    """The audit's verdict in one round, and the stages it sends back for rework (if any)."""

    time: float
    round: int
    verdict: str
    summary: str
    findings: int
    rework: tuple[str, ...]


@dataclass(slots=True)
class StageSkipped:
    time: float
    stage: str
    reason: str
    conditional: bool = False  # its ``if`` was false: dependents still run


@dataclass(slots=True)
class StageExpanded:
    """A foreach stage fanned out into instances ``<stage>[<key>]``, one per item."""

    time: float
    stage: str
    instances: tuple[str, ...]
    items: tuple[Any, ...] = field(repr=False, default=())


@dataclass(slots=True)
class StageReopened:
    """A finished or skipped stage goes back to pending: it is started again by hand after a failure, or
    a stage it needs is (``orchestrate state start``), or the audit sent it back in a run driven by hand."""

    time: float
    stage: str
    reason: str


@dataclass(slots=True)
class StageNoted:
    """A note on a stage (``orchestrate state note``), for the people and agents who read the state."""

    time: float
    stage: str
    text: str
    by: str = ""


@dataclass(slots=True)
class RunFinished:
    time: float
    status: str
    duration: float
    usage: Usage
    cost_usd: float | None
    verdict: str | None
    failed: tuple[str, ...]
    skipped: tuple[str, ...]
    waiting: tuple[str, ...] = ()
    note: str = ""  # why a run stopped early (the budget), in words


Event = (
    RunStarted
    | StageStarted
    | StageReused
    | AttemptFinished
    | ToolFinished
    | BatchSubmitted
    | StageRetrying
    | StageSucceeded
    | StageFailed
    | StageSkipped
    | StageExpanded
    | StageReopened
    | StageNoted
    | ApprovalRequested
    | ApprovalDecided
    | AuditRound
    | RunFinished
)

_NAMES: dict[type[Any], str] = {
    RunStarted: "run_started",
    StageStarted: "stage_started",
    StageReused: "stage_reused",
    AttemptFinished: "attempt_finished",
    ToolFinished: "tool_finished",
    BatchSubmitted: "batch_submitted",
    StageRetrying: "stage_retrying",
    StageSucceeded: "stage_succeeded",
    StageFailed: "stage_failed",
    StageSkipped: "stage_skipped",
    StageExpanded: "stage_expanded",
    StageReopened: "stage_reopened",
    StageNoted: "stage_noted",
    ApprovalRequested: "approval_requested",
    ApprovalDecided: "approval_decided",
    AuditRound: "audit_round",
    RunFinished: "run_finished",
}
_TYPES = {name: kind for kind, name in _NAMES.items()}


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def _plain(value: Any) -> Any:
    if isinstance(value, Usage):
        return _fields(value)
    if isinstance(value, AttemptRecord):
        record = _fields(value)
        record["usage"] = _fields(value.usage)
        return record
    return value


def to_json(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict with an ``event`` name first; stage outputs left out."""
    # Hand-rolled rather than dataclasses.asdict: this runs once per event of every run.
    out: dict[str, Any] = {"event": _NAMES[type(event)]}
    for name in event.__slots__:
        if name != "output":
            out[name] = _plain(getattr(event, name))
    if isinstance(event, StageSucceeded | StageReused):
        out["output_chars"] = len(event.output)
    return out


def from_json(data: dict[str, Any]) -> Event:
    """The event a ``to_json`` dict was made from (outputs come back empty: they live in files).

    Raises ``ValueError`` for anything that is not such a dict.
    """
    kind = _TYPES.get(data.get("event", ""))
    if kind is None:
        raise ValueError(f"unknown event {data.get('event')!r}")
    values: dict[str, Any] = {}
    for name in kind.__slots__:
        if name == "output":
            values[name] = ""
        elif name in data:
            value = data[name]
            if name == "usage":
                value = Usage(**value)
            elif name == "attempt" and isinstance(value, dict):
                value = AttemptRecord(**{**value, "usage": Usage(**value.get("usage", {}))})
            elif isinstance(value, list):
                value = tuple(value)
            values[name] = value
    try:
        return kind(**values)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ValueError(str(exc)) from None


class Listener(Protocol):
    def on_event(self, event: Event) -> None:
        """Called on the event loop's thread, in order; must not block for long."""
        ...
