"""A task's history: every run of it, read from its event log, with totals across runs.

``state.json`` holds the latest run; ``events.jsonl`` holds them all. Each
``run_started`` begins an entry (a resumed run is an entry of its own, under the
same run id): when it began, how it ended (``killed`` when its log stops before
``run_finished``), how long it took, its requests, tokens and cost, which stages
ran and which were kept. ``history_of`` reads one task folder; nothing is
written. Pure over the events, so its figures are the events' sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import AttemptFinished, Event, RunFinished, RunStarted, StageReused, StageStarted
from ..runners import Usage
from .model import Tokens, timestamp
from .repository import FileRepository

__all__ = ["RunEntry", "TaskHistory", "history_of", "runs_of"]


@dataclass
class RunEntry:
    """One run (or resumed part of a run) of a task."""

    run_id: str
    started: float
    resumed: bool = False
    status: str = "killed"  # no run_finished: the process died (or the run goes on now)
    duration: float | None = None
    requests: int = 0  # requests to the Messages API (commands and kept stages make none)
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = 0.0
    ran: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    verdict: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started": timestamp(self.started),
            "resumed": self.resumed,
            "status": self.status,
            "duration": self.duration,
            "requests": self.requests,
            "attempts": self.attempts,
            "tokens": Tokens.of(self.usage).model_dump(),
            "cost_usd": self.cost_usd,
            "ran": self.ran,
            "kept": self.kept,
            "verdict": self.verdict,
        }


@dataclass
class TaskHistory:
    task: str
    runs: list[RunEntry]

    @property
    def requests(self) -> int:
        return sum(run.requests for run in self.runs)

    @property
    def usage(self) -> Usage:
        total = Usage()
        for run in self.runs:
            total = total + run.usage
        return total

    @property
    def cost_usd(self) -> float | None:
        costs = [run.cost_usd for run in self.runs]
        return None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6)

    @property
    def duration(self) -> float:
        return round(sum(run.duration or 0.0 for run in self.runs), 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "runs": [run.to_json() for run in self.runs],
            "totals": {
                "runs": len(self.runs),
                "duration": self.duration,
                "requests": self.requests,
                "tokens": Tokens.of(self.usage).model_dump(),
                "cost_usd": self.cost_usd,
            },
        }


def runs_of(events: list[Event]) -> list[RunEntry]:
    """The runs an event log records, in order."""
    runs: list[RunEntry] = []
    current: RunEntry | None = None
    for event in events:
        if isinstance(event, RunStarted):
            current = RunEntry(event.run_id, event.time, event.resumed)
            runs.append(current)
        elif current is None:
            continue  # events before any run_started (a log from an older version): not a run
        elif isinstance(event, AttemptFinished):
            attempt = event.attempt
            current.attempts += 1
            if attempt.usage.total or attempt.status_code is not None or attempt.request_id is not None:
                current.requests += 1
            current.usage = current.usage + attempt.usage
            cost = event.cost_usd if attempt.usage.total else 0.0
            current.cost_usd = None if current.cost_usd is None or cost is None else round(current.cost_usd + cost, 6)
        elif isinstance(event, StageStarted):
            if event.stage not in current.ran:
                current.ran.append(event.stage)
        elif isinstance(event, StageReused):
            current.kept.append(event.stage)
        elif isinstance(event, RunFinished):
            current.status = event.status
            current.duration = event.duration
            current.verdict = event.verdict
            current = None
    return runs


def history_of(folder: Path, task: str, display: str | None = None) -> TaskHistory:
    """Every run of the task in ``folder`` (raises ``StateError`` for a damaged log)."""
    repository = FileRepository(folder, display)
    return TaskHistory(task, runs_of([event for _, event in repository.events()]))
