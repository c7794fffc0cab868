"""``StateStore``: the event listener that keeps a task's state folder current.

    docs/ai/<task>/
      state.json          the source of truth (RunState, versioned)
      workflow-state.md   regenerated from it, for people and agents; never parsed back
      events.jsonl        append-only, one event per line
      stages/<id>.md      each finished stage's output (stages/<id>.json for structured ones)

The store is an event listener. Events are logged to ``events.jsonl`` in
whole lines, a finished stage's output is written before any line records the
stage as done, and ``state.json`` and the markdown are rewritten atomically at
most every ``flush_interval`` seconds (and at the end), so a long run costs
O(stages) writes, not O(stages²); killing the process at any instant leaves
files that parse and agree with each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import StateError
from ..events import (
    Event,
    RunFinished,
    StageFailed,
    StageSucceeded,
    to_json,
)
from ..fileio import atomic_write, replace_file
from .model import RunState
from .reducer import apply_event
from .repository import STAGES_DIR, FileRepository

BATCH_DELAY = 0.005  # seconds the writer lets events gather before writing them

__all__ = ["StateStore"]


class StateStore:
    """Keeps a run's state folder current (see the module docstring).

    Given the run's event ``loop``, ``on_event`` only queues the event; the
    queue is written once per turn of the loop, on the loop's thread, after
    whatever the engine did in that turn, and ``state.json`` and the report
    when ``flush_interval`` has passed (longer for a state so big that writing
    it would take more than a tenth of that). One thread for the engine and the
    writes: a writer thread of its own would wait for the interpreter lock after
    each of its system calls while the engine runs, which measured three to
    five times slower than writing between the engine's turns. Without a loop
    (a state command recording one step under the task's lock) each event is
    written before ``on_event`` returns. ``close`` writes what is left and the
    final state, and re-raises a write error if one happened.
    """

    def __init__(
        self,
        folder: Path,
        state: RunState,
        render_markdown: Callable[[RunState], str],
        *,
        flush_interval: float = 0.25,
        loop: asyncio.AbstractEventLoop | None = None,
        snapshot: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.folder = folder
        self.repository = FileRepository(folder)
        self.state = state
        # Told of a failed write at once: the run must stop paying for work it can't keep.
        self.on_error = on_error
        self.render_markdown = render_markdown
        self.flush_interval = flush_interval
        self._loop = loop
        self._events_fd: int | None = None
        self._error: BaseException | None = None
        self._queued: list[Event] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._lines: list[bytes] = []  # logged lines not yet written (see _write_lines)
        try:
            stages = self.repository.stages
            stages.mkdir(parents=True, exist_ok=True)
            # Temp files of atomic writes a killed run never renamed; the caller holds the task's lock.
            for leftover in [*folder.glob(".*.tmp"), *stages.glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
            self._events_fd, self._offset = self.repository.open_log()
        except OSError as exc:
            raise StateError(f"can't write the state folder {folder}: {exc.strerror or exc}") from exc
        self._dirty = False
        self._last_flush = time.monotonic()
        self._flush_cost = 0.0
        if snapshot:  # a run's first snapshot comes before anything it logs (see recover_state)
            self.flush()

    def on_event(self, event: Event) -> None:
        if self._loop is None:  # the caller waits for each write, and reads ``state`` right after
            self._handle(event)
            self._write_lines()
            if time.monotonic() - self._last_flush >= self._interval():
                self.flush()
            return
        self._queued.append(event)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def close(self) -> None:
        """Write everything still queued and the final state; raise the first write error, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._error is None:
            self._drain()
        if self._error is None and self._events_fd is not None and self._dirty:
            try:
                self.flush()
            except BaseException as exc:
                self._error = exc
        if self._events_fd is not None:
            os.close(self._events_fd)
            self._events_fd = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- writing, between the engine's turns ---------------------------------------------------------

    def _drain(self) -> None:
        self._scheduled = False
        if self._error is not None:
            self._queued.clear()
            return
        queued, self._queued = self._queued, []
        try:
            for event in queued:
                self._handle(event)
            self._write_lines()
            if any(isinstance(event, RunFinished) for event in queued):
                self.flush()
            elif self._dirty:
                self._flush_later()
        except BaseException as exc:  # kept for close(), and said at once: the run must not go on unrecorded
            self._error = exc
            if self.on_error is not None:
                self.on_error(exc)

    def _flush_later(self) -> None:
        """Flush now if the interval has passed, else once it has (unless more events come first)."""
        due = self._last_flush + self._interval() - time.monotonic()
        if due <= 0:
            self.flush()
        elif self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(due, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        if self._error is None and self._dirty:
            try:
                self.flush()
            except BaseException as exc:
                self._error = exc
                if self.on_error is not None:
                    self.on_error(exc)

    def _handle(self, event: Event) -> None:
        self._dirty = True
        if isinstance(event, StageFailed):
            # The stage ran again and failed: its earlier output no longer belongs to it, on disk as in
            # the state. (On success the new output replaces it; a killed run leaves it unrecorded.)
            self.repository.output_file(event.stage).unlink(missing_ok=True)
            self.repository.data_file(event.stage).unlink(missing_ok=True)
        if isinstance(event, StageSucceeded):
            # The output is on disk before any record says the stage succeeded.
            self.state.stages[event.stage].output = self._write_output(event)
        self._append(event)
        apply_event(self.state, event)

    def _append(self, event: Event) -> None:
        if self._events_fd is None:
            return
        self._lines.append((json.dumps(to_json(event), separators=(",", ":"), default=str) + "\n").encode("utf-8"))

    def _write_lines(self) -> None:
        """Log the events handled since the last call, in one write: lines of a batch are logged together, after
        the outputs of the stages they record (written as each was handled)."""
        if not self._lines or self._events_fd is None:
            self._lines.clear()
            return
        data = b"".join(self._lines)
        self._lines.clear()
        # One write of whole lines to an O_APPEND file: a killed process leaves whole lines (a torn last one, at
        # worst, is cut aside when the log is next opened).
        view = memoryview(data)
        while view:
            view = view[os.write(self._events_fd, view) :]
        self._offset += len(data)

    def _write_output(self, event: StageSucceeded) -> str:
        path = self.repository.output_file(event.stage)
        text = event.output if event.output.endswith("\n") or not event.output else event.output + "\n"
        # Atomic now, durable with the next state flush (its fsync commits these too): one fsync
        # per stage would cost more than the scheduling of a short stage.
        self._replace(path, text.encode("utf-8"))
        if event.data is not None:
            data = json.dumps(event.data, indent=2, ensure_ascii=False) + "\n"
            self._replace(self.repository.data_file(event.stage), data.encode("utf-8"))
        return f"{STAGES_DIR}/{event.stage}.md"

    def _replace(self, path: Path, content: bytes) -> None:
        try:
            replace_file(path, content)
        except OSError as exc:
            raise StateError(f"can't write {path}: {exc.strerror or exc}") from exc

    def _write(self, path: Path, content: bytes, *, durable: bool = True) -> None:
        try:
            atomic_write(path, content, durable=durable)
        except OSError as exc:
            raise StateError(f"can't write {path}: {exc.strerror or exc}") from exc

    def _interval(self) -> float:
        """Seconds between two flushes: ``flush_interval``, or longer for a state so big that writing it takes
        more than a tenth of that (a run of thousands of stages), so the writer keeps up with the run."""
        return max(self.flush_interval, 10 * self._flush_cost)

    def flush(self) -> None:
        """Write ``state.json`` and ``workflow-state.md`` (each atomically)."""
        self._write_lines()
        started = time.monotonic()
        self._last_flush = started
        self.state.log_offset = self._offset
        self._write(self.repository.state_file, (self.state.model_dump_json(indent=2) + "\n").encode("utf-8"))
        self._write(self.repository.report_file, self.render_markdown(self.state).encode("utf-8"))
        self._dirty = False
        self._flush_cost = time.monotonic() - started
