"""``StateStore``: the event listener that keeps a task's state folder current.

    docs/ai/<task>/
      state.json          the source of truth (RunState, versioned)
      workflow-state.md   regenerated from it, for people and agents; never parsed back
      events.jsonl        append-only, one event per line
      stages/<id>.md      each finished stage's output (stages/<id>.json for structured ones)

The store is an event listener with a writer thread of its own. Each event is
appended to ``events.jsonl`` with a single write, a finished stage's output is
written before anything records the stage as done, and ``state.json`` and the
markdown are rewritten atomically at most every ``flush_interval`` seconds (and
at the end), so a long run costs O(stages) writes, not O(stages²); killing the
process at any instant leaves files that parse and agree with each other.
"""

from __future__ import annotations

import json
import os
import queue
import threading
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
from ..fileio import atomic_write
from .model import RunState
from .reducer import apply_event
from .repository import FileRepository

BATCH_DELAY = 0.005  # seconds the writer lets events gather before writing them

__all__ = ["StateStore"]


class StateStore:
    """Keeps a run's state folder current (see the module docstring).

    One writer thread owns the state and the files once the store is built: the
    event loop only hands it events (``on_event`` is a queue put), so writing,
    fsync and rendering never hold up the scheduler, and everything reaches the
    disk in the order it happened. ``close`` drains the queue, writes the final
    state and re-raises a write error if one happened. With ``threaded=False``
    (a state command recording one step under the task's lock) each event is
    written before ``on_event`` returns, and ``close`` writes the state files.
    """

    def __init__(
        self,
        folder: Path,
        state: RunState,
        render_markdown: Callable[[RunState], str],
        *,
        flush_interval: float = 0.25,
        threaded: bool = True,
        snapshot: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.folder = folder
        self.repository = FileRepository(folder)
        self.state = state
        # Told of a failed write at once (from the writer thread): the run must stop paying for work it can't keep.
        self.on_error = on_error
        self.render_markdown = render_markdown
        self.flush_interval = flush_interval
        self._events_fd: int | None = None
        self._error: BaseException | None = None
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
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
        if snapshot:  # a run's first snapshot comes before anything it logs (see recover_state)
            self.flush()
        self._thread = threading.Thread(target=self._work, name="orchestrate-state-writer", daemon=True)
        if threaded:
            self._thread.start()
        self._threaded = threaded

    # -- the event loop's side ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if self._threaded:
            self._queue.put(event)
        else:  # the caller waits for each write, and reads ``state`` right after
            self._handle(event)

    def close(self) -> None:
        """Write everything still queued and the final state; raise the first write error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        elif not self._threaded and self._events_fd is not None and self._dirty:
            self.flush()
        if self._events_fd is not None:
            os.close(self._events_fd)
            self._events_fd = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- the writer thread -------------------------------------------------------------------------

    def _work(self) -> None:
        dirty = False
        try:
            while True:
                wait = max(0.0, self._last_flush + self.flush_interval - time.monotonic()) if dirty else None
                try:
                    first = self._queue.get(timeout=wait)
                except queue.Empty:
                    self.flush()  # quiet for a while: write what has changed
                    dirty = False
                    continue
                # Let a burst of events (a fan-out starting) arrive before taking the GIL to write them:
                # the scheduler is never made to wait for the writer, and batches are cheaper to write.
                time.sleep(BATCH_DELAY)
                batch = [first]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                for event in batch:
                    if event is None:
                        self.flush()
                        return
                    self._handle(event)
                    dirty = True
                    if isinstance(event, RunFinished):
                        self.flush()
                        dirty = False
                if dirty and time.monotonic() - self._last_flush >= self.flush_interval:
                    self.flush()
                    dirty = False
        except BaseException as exc:  # kept for close(), and said at once: the run must not go on unrecorded
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
        line = (json.dumps(to_json(event), separators=(",", ":"), default=str) + "\n").encode("utf-8")
        # One write of a whole line to an O_APPEND file: a killed process leaves whole lines.
        os.write(self._events_fd, line)
        self._offset += len(line)

    def _write_output(self, event: StageSucceeded) -> str:
        path = self.repository.output_file(event.stage)
        text = event.output if event.output.endswith("\n") or not event.output else event.output + "\n"
        # Atomic now, durable with the next state flush (its fsync commits these too): one fsync
        # per stage would cost more than the scheduling of a short stage.
        self._write(path, text.encode("utf-8"), durable=False)
        if event.data is not None:
            data = json.dumps(event.data, indent=2, ensure_ascii=False) + "\n"
            self._write(self.repository.data_file(event.stage), data.encode("utf-8"), durable=False)
        return path.relative_to(self.folder).as_posix()

    def _write(self, path: Path, content: bytes, *, durable: bool = True) -> None:
        try:
            atomic_write(path, content, durable=durable)
        except OSError as exc:
            raise StateError(f"can't write {path}: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        """Write ``state.json`` and ``workflow-state.md`` (each atomically)."""
        self._last_flush = time.monotonic()
        self.state.log_offset = self._offset
        self._write(self.repository.state_file, (self.state.model_dump_json(indent=2) + "\n").encode("utf-8"))
        self._write(self.repository.report_file, self.render_markdown(self.state).encode("utf-8"))
