"""Views of a running workflow, as event listeners writing to streams the CLI hands them.

- ``LiveView``: in a terminal, a table (rich) of every stage with status, elapsed
  time and tokens, so parallel stages visibly overlap.
- ``PlainView``: anywhere else, one line per event.
- ``JsonView``: ``--json``, one JSON object per event, nothing else on stdout.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, TextIO

from .events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    Event,
    RunFinished,
    RunStarted,
    StageExpanded,
    StageFailed,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
    to_json,
)
from .state.report import format_cost, format_duration

__all__ = ["JsonView", "LiveView", "PlainView", "describe"]


def _usage_text(event: StageSucceeded) -> str:
    usage = event.usage
    return f"{usage.input_tokens:,} in / {usage.output_tokens:,} out, {format_cost(event.cost_usd)}"


class _Lines:
    """Writes whole lines to a stream; once the reader has gone (``run | head``), it stays quiet, so a closed
    pipe never stops the run: the state folder records it all the same."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False

    def write(self, line: str) -> None:
        if self.closed:
            return
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
            self.closed = True


class JsonView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._out = _Lines(stream)

    def on_event(self, event: Event) -> None:
        self._out.write(json.dumps(to_json(event), default=str))


class PlainView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._out = _Lines(stream)

    def _line(self, event: Event, text: str) -> None:
        clock = datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
        self._out.write(f"{clock}  {text}")

    def on_event(self, event: Event) -> None:
        text = describe(event)
        if text:
            self._line(event, text)


def describe(event: Event) -> str:
    """One line about an event, for people; empty for events not worth a line."""
    if isinstance(event, RunStarted):
        how = "continuing" if event.resumed else "run"
        rnd = f", audit round {event.round}" if event.round > 1 else ""
        return (
            f"{how} {event.run_id}: {event.workflow}, task {event.task}, {len(event.stages)} stages, "
            f"up to {event.max_parallel} at once{rnd}"
        )
    if isinstance(event, StageStarted):
        why = f" — {event.reason}" if event.reason else ""
        who = f" ({event.agent}, {event.model})" if event.agent else " (command)"
        return f"{event.stage}: started{who}{why}"
    if isinstance(event, StageReused):
        return f"{event.stage}: kept ({event.reason})"
    if isinstance(event, AttemptFinished) and event.attempt.error:
        return f"{event.stage}: attempt {event.attempt.number} failed: {event.attempt.error}"
    if isinstance(event, StageRetrying):
        return f"{event.stage}: try {event.attempt} failed, trying again: {event.error}"
    if isinstance(event, StageSucceeded):
        return f"{event.stage}: succeeded in {format_duration(event.duration)}, {_usage_text(event)}"
    if isinstance(event, StageFailed):
        what = "interrupted" if event.interrupted else "failed"
        return f"{event.stage}: {what} after {format_duration(event.duration)}: {event.error}"
    if isinstance(event, StageSkipped):
        return f"{event.stage}: skipped: {event.reason}"
    if isinstance(event, StageExpanded):
        count = len(event.instances)
        return f"{event.stage}: {count} item{'s' if count != 1 else ''}" + (
            f" → {', '.join(event.instances[:6])}{' …' if count > 6 else ''}" if count else ", nothing to do"
        )
    if isinstance(event, ApprovalRequested):
        message = f": {event.message}" if event.message else ""
        return f"{event.stage}: waiting for approval{message}"
    if isinstance(event, ApprovalDecided):
        what = "approved" if event.approved else "rejected"
        who = f" by {event.by}" if event.by else ""
        return f"{event.stage}: {what}{who}" + (f": {event.note}" if event.note else "")
    if isinstance(event, AuditRound):
        sent = f"; sending back {', '.join(event.rework)}" if event.rework else ""
        return f"audit round {event.round}: {event.verdict} ({event.findings} findings){sent}"
    if isinstance(event, RunFinished):
        return f"run {event.status.replace('_', ' ')} in {format_duration(event.duration)}"
    return ""


class LiveView:
    """A live table of the stages; rich is imported only when a terminal needs it."""

    max_rows = 30

    def __init__(self, stream: TextIO, width: int | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, width=width)
        self.rows: dict[str, dict[str, Any]] = {}
        self.finished: list[str] = []
        self.title = ""
        self.live = Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=self._table)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, title_justify="left", expand=False)
        for column, justify in (
            ("stage", "left"),
            ("agent", "left"),
            ("status", "left"),
            ("elapsed", "right"),
            ("tokens in / out", "right"),
            ("cost", "right"),
            ("note", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        styles = {
            "running": "yellow",
            "succeeded": "green",
            "kept": "green",
            "failed": "red",
            "interrupted": "red",
            "skipped": "dim",
            "waiting approval": "magenta",
        }
        now = time.monotonic()
        shown = list(self.rows)
        if len(shown) > self.max_rows:
            # A big run: what is running or failed, and the last few to finish; the rest is counted.
            recent = set(self.finished[-5:])
            shown = [s for s, r in self.rows.items() if r["status"] in ("running", "failed") or s in recent]
            counts: dict[str, int] = {}
            for row in self.rows.values():
                counts[row["status"]] = counts.get(row["status"], 0) + 1
            table.caption = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        for sid in shown:
            row = self.rows[sid]
            status = row["status"]
            elapsed = row.get("duration")
            if status == "running" and "clock" in row:
                elapsed = now - row["clock"]
            table.add_row(
                sid,
                row["agent"],
                f"[{styles.get(status, '')}]{status}[/]" if status in styles else status,
                format_duration(elapsed) if elapsed is not None else "",
                row.get("tokens", ""),
                row.get("cost", ""),
                row.get("note", ""),
            )
        return table

    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.title = f"{event.workflow}: {event.task} (up to {event.max_parallel} at once)"
            self.rows = {sid: {"status": "pending", "agent": ""} for sid in event.stages}
            self.live.start()
            return
        if isinstance(event, RunFinished):
            self.live.refresh()
            self.live.stop()
            return
        if isinstance(event, AuditRound):
            if event.rework:
                self.title = f"{self.title.split(' — ')[0]} — audit round {event.round + 1}"
            return
        row = self.rows.setdefault(event.stage, {"status": "pending", "agent": ""})
        if isinstance(event, StageStarted):
            row.update(status="running", agent=event.agent, clock=time.monotonic(), note=event.reason[:80])
        elif isinstance(event, StageReused):
            row.update(status="kept", note=event.reason[:80])
        elif isinstance(event, StageRetrying):
            row["note"] = f"try {event.attempt} failed: {event.error}"[:80]
        elif isinstance(event, ApprovalRequested):
            row.update(status="waiting approval", note=(event.message or "orchestrate approve")[:80])
        elif isinstance(event, ApprovalDecided):
            row.update(
                status="succeeded" if event.approved else "failed", note=("approved" if event.approved else "rejected")
            )
        elif isinstance(event, AttemptFinished) and event.attempt.error:
            row["note"] = f"attempt {event.attempt.number}: {event.attempt.error}"[:80]
        elif isinstance(event, StageSucceeded):
            row.update(
                status="succeeded",
                duration=event.duration,
                tokens=f"{event.usage.input_tokens:,} / {event.usage.output_tokens:,}",
                cost=format_cost(event.cost_usd),
                note="",
            )
        elif isinstance(event, StageFailed):
            status = "interrupted" if event.interrupted else "failed"
            row.update(status=status, duration=event.duration, note=event.error[:80])
        elif isinstance(event, StageSkipped):
            row.update(status="skipped", note=event.reason)
        if isinstance(event, StageSucceeded | StageFailed | StageSkipped | StageReused):
            self.finished.append(event.stage)
