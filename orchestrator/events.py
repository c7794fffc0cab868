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
    "AttemptFinished",
    "Event",
    "Listener",
    "RunFinished",
    "RunStarted",
    "StageFailed",
    "StageSkipped",
    "StageStarted",
    "StageSucceeded",
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


@dataclass(slots=True)
class StageStarted:
    time: float
    stage: str
    agent: str
    model: str


@dataclass(slots=True)
class AttemptFinished:
    time: float
    stage: str
    attempt: AttemptRecord
    cost_usd: float | None


@dataclass(slots=True)
class StageSucceeded:
    time: float
    stage: str
    duration: float
    usage: Usage
    cost_usd: float | None
    output: str = field(repr=False)  # left out of to_json: outputs live in stages/<id>.md
    data: dict[str, Any] | None = None


@dataclass(slots=True)
class StageFailed:
    time: float
    stage: str
    duration: float
    error: str


@dataclass(slots=True)
class StageSkipped:
    time: float
    stage: str
    reason: str


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


Event = RunStarted | StageStarted | AttemptFinished | StageSucceeded | StageFailed | StageSkipped | RunFinished

_NAMES = {
    RunStarted: "run_started",
    StageStarted: "stage_started",
    AttemptFinished: "attempt_finished",
    StageSucceeded: "stage_succeeded",
    StageFailed: "stage_failed",
    StageSkipped: "stage_skipped",
    RunFinished: "run_finished",
}


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
    if isinstance(event, StageSucceeded):
        out["output_chars"] = len(event.output)
    return out


class Listener(Protocol):
    def on_event(self, event: Event) -> None:
        """Called on the event loop's thread, in order; must not block for long."""
        ...
