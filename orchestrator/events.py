"""What happens during a run, as plain events, and the Protocol of those who listen.

The engine emits events and never prints or writes; the state store, the
console views and the JSON-lines output are listeners. ``to_json`` is the one
serialisation of an event (``events.jsonl`` and ``run --json`` use it); stage
outputs are left out of it, they live in ``stages/<id>.md``.
"""

from __future__ import annotations

import dataclasses
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


@dataclass(frozen=True)
class RunStarted:
    time: float
    run_id: str
    workflow: str
    task: str
    stages: tuple[str, ...]
    max_parallel: int


@dataclass(frozen=True)
class StageStarted:
    time: float
    stage: str
    agent: str
    model: str


@dataclass(frozen=True)
class AttemptFinished:
    time: float
    stage: str
    attempt: AttemptRecord
    cost_usd: float | None


@dataclass(frozen=True)
class StageSucceeded:
    time: float
    stage: str
    duration: float
    usage: Usage
    cost_usd: float | None
    output: str = field(repr=False, metadata={"json": False})
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class StageFailed:
    time: float
    stage: str
    duration: float
    error: str


@dataclass(frozen=True)
class StageSkipped:
    time: float
    stage: str
    reason: str


@dataclass(frozen=True)
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


def to_json(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict with an ``event`` name first; stage outputs left out."""
    out: dict[str, Any] = {"event": _NAMES[type(event)]}
    for item in dataclasses.fields(event):
        if item.metadata.get("json", True):
            value = getattr(event, item.name)
            is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
            out[item.name] = dataclasses.asdict(value) if is_record else value
    if isinstance(event, StageSucceeded):
        out["output_chars"] = len(event.output)
    return out


class Listener(Protocol):
    def on_event(self, event: Event) -> None:
        """Called on the event loop's thread, in order; must not block for long."""
        ...
