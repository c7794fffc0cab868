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
    AttemptFinished,
    Event,
    RunFinished,
    RunStarted,
    StageFailed,
    StageSkipped,
    StageStarted,
    StageSucceeded,
    to_json,
)
from .report import format_cost, format_duration

__all__ = ["JsonView", "LiveView", "PlainView"]


def _usage_text(event: StageSucceeded) -> str:
    usage = event.usage
    return f"{usage.input_tokens:,} in / {usage.output_tokens:,} out, {format_cost(event.cost_usd)}"


class JsonView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def on_event(self, event: Event) -> None:
        self.stream.write(json.dumps(to_json(event), default=str) + "\n")
        self.stream.flush()


class PlainView:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def _line(self, event: Event, text: str) -> None:
        clock = datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
        self.stream.write(f"{clock}  {text}\n")
        self.stream.flush()

    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._line(
                event,
                f"run {event.run_id}: {event.workflow}, task {event.task}, {len(event.stages)} stages, "
                f"up to {event.max_parallel} at once",
            )
        elif isinstance(event, StageStarted):
            self._line(event, f"{event.stage}: started ({event.agent}, {event.model})")
        elif isinstance(event, AttemptFinished) and event.attempt.error:
            self._line(event, f"{event.stage}: attempt {event.attempt.number} failed: {event.attempt.error}")
        elif isinstance(event, StageSucceeded):
            self._line(event, f"{event.stage}: succeeded in {format_duration(event.duration)}, {_usage_text(event)}")
        elif isinstance(event, StageFailed):
            self._line(event, f"{event.stage}: failed after {format_duration(event.duration)}: {event.error}")
        elif isinstance(event, StageSkipped):
            self._line(event, f"{event.stage}: skipped: {event.reason}")
        elif isinstance(event, RunFinished):
            self._line(event, f"run {event.status} in {format_duration(event.duration)}")


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
        styles = {"running": "yellow", "succeeded": "green", "failed": "red", "skipped": "dim"}
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
        row = self.rows.setdefault(event.stage, {"status": "pending", "agent": ""})
        if isinstance(event, StageStarted):
            row.update(status="running", agent=event.agent, clock=time.monotonic())
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
            row.update(status="failed", duration=event.duration, note=event.error[:80])
        elif isinstance(event, StageSkipped):
            row.update(status="skipped", note=event.reason)
        if isinstance(event, StageSucceeded | StageFailed | StageSkipped):
            self.finished.append(event.stage)
