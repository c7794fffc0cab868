"""A run's state on disk: the models of ``state.json`` and the store that keeps the folder current.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .audit import Verdict
from .errors import StateError
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
from .fileio import atomic_write
from .runners import Usage

__all__ = ["SCHEMA_VERSION", "RunState", "StageState", "StateStore", "Tokens", "load_state", "timestamp"]

SCHEMA_VERSION = 1
BATCH_DELAY = 0.005  # seconds the writer lets events gather before writing them
StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped"]
RunStatus = Literal["running", "succeeded", "failed", "interrupted"]


def timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Tokens(BaseModel):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @classmethod
    def of(cls, usage: Usage) -> Tokens:
        return cls.model_construct(
            input=usage.input_tokens,
            output=usage.output_tokens,
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
        )


class AttemptState(BaseModel):
    number: int
    started: str
    duration: float
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = None
    error: str | None = None
    status_code: int | None = None
    request_id: str | None = None


class StageState(BaseModel):
    id: str
    agent: str
    model: str
    needs: list[str] = Field(default_factory=list)
    status: StageStatus = "pending"
    attempts: list[AttemptState] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    output: str | None = None
    error: str | None = None


class RunState(BaseModel):
    """Everything about one run of a task; ``state.json`` holds exactly this."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    workflow: str
    workflow_file: str
    description: str = ""
    task: str
    params: dict[str, Any] = Field(default_factory=dict)
    command: str = ""
    offline: bool = False
    max_parallel: int = 1
    status: RunStatus = "running"
    started: str
    finished: str | None = None
    duration: float | None = None
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    audit_stage: str
    audit: Verdict | None = None
    stages: dict[str, StageState]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stage in self.stages.values():
            out[stage.status] = out.get(stage.status, 0) + 1
        return out


def load_state(folder: Path, *, display: str | None = None) -> RunState:
    """Read ``state.json`` of a task folder, with a clear error when it is missing or unreadable.

    ``display`` is how messages name the folder (default: as given).
    """
    shown = display or str(folder)
    path = folder / "state.json"
    named = f"{shown}/state.json"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StateError(
            f"no run state in {shown}/", hint="start one with: orchestrate run <workflow> --task <task>"
        ) from None
    except OSError as exc:
        raise StateError(f"can't read {named}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StateError(f"{named} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        raise StateError(
            f"{named} has schema version {data.get('schema_version')!r}; this orchestrate reads {SCHEMA_VERSION}",
            hint="upgrade orchestrate, or start the task afresh",
        )
    try:
        return RunState.model_validate(data)
    except ValidationError as exc:
        raise StateError(f"{named} does not hold a valid run state: {exc.errors()[0]['msg']}") from None


def _added(tokens: Tokens, cost: float | None, usage: Usage, more: float | None) -> tuple[Tokens, float | None]:
    total = Tokens.model_construct(
        input=tokens.input + usage.input_tokens,
        output=tokens.output + usage.output_tokens,
        cache_read=tokens.cache_read + usage.cache_read_tokens,
        cache_write=tokens.cache_write + usage.cache_write_tokens,
    )
    return total, (None if cost is None or more is None else round(cost + more, 6))


class StateStore:
    """Keeps a run's state folder current (see the module docstring).

    One writer thread owns the state and the files once the store is built: the
    event loop only hands it events (``on_event`` is a queue put), so writing,
    fsync and rendering never hold up the scheduler, and everything reaches the
    disk in the order it happened. ``close`` drains the queue, writes the final
    state and re-raises a write error if one happened.
    """

    def __init__(
        self,
        folder: Path,
        state: RunState,
        render_markdown: Callable[[RunState], str],
        *,
        flush_interval: float = 0.25,
    ) -> None:
        self.folder = folder
        self.state = state
        self.render_markdown = render_markdown
        self.flush_interval = flush_interval
        self._events_fd: int | None = None
        self._error: BaseException | None = None
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        try:
            (folder / "stages").mkdir(parents=True, exist_ok=True)
            self._events_fd = os.open(folder / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise StateError(f"can't write the state folder {folder}: {exc.strerror or exc}") from exc
        self.flush()
        self._thread = threading.Thread(target=self._work, name="orchestrate-state-writer", daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        self._queue.put(event)

    def close(self) -> None:
        """Write everything still queued and the final state; raise the first write error, if any."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
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
        except BaseException as exc:  # kept for close(); the run itself goes on
            self._error = exc

    def _handle(self, event: Event) -> None:
        if isinstance(event, StageSucceeded):
            # The output is on disk before any record says the stage succeeded.
            self.state.stages[event.stage].output = self._write_output(event)
        self._append(event)
        self._apply(event)

    def _append(self, event: Event) -> None:
        if self._events_fd is None:
            return
        line = json.dumps(to_json(event), separators=(",", ":"), default=str) + "\n"
        # One write of a whole line to an O_APPEND file: a killed process leaves whole lines.
        os.write(self._events_fd, line.encode("utf-8"))

    def _apply(self, event: Event) -> None:
        state = self.state
        if isinstance(event, RunStarted):
            state.status = "running"
            return
        if isinstance(event, RunFinished):
            state.status = event.status  # type: ignore[assignment]
            state.finished = timestamp(event.time)
            state.duration = event.duration
            state.tokens = Tokens.of(event.usage)
            state.cost_usd = event.cost_usd
            return
        stage = state.stages[event.stage]
        if isinstance(event, StageStarted):
            stage.status = "running"
            stage.started = timestamp(event.time)
            stage.model = event.model
        elif isinstance(event, AttemptFinished):
            record = event.attempt
            stage.attempts.append(
                AttemptState.model_construct(  # values from our own event: no need to validate them again
                    number=record.number,
                    started=timestamp(record.started),
                    duration=record.duration,
                    tokens=Tokens.of(record.usage),
                    cost_usd=event.cost_usd,
                    error=record.error,
                    status_code=record.status_code,
                    request_id=record.request_id,
                )
            )
            # Stage and run totals follow every attempt, so an interrupted run still shows what it spent.
            stage.tokens, stage.cost_usd = _added(stage.tokens, stage.cost_usd, record.usage, event.cost_usd)
            state.tokens, state.cost_usd = _added(state.tokens, state.cost_usd, record.usage, event.cost_usd)
        elif isinstance(event, StageSucceeded):
            stage.status = "succeeded"
            stage.finished = timestamp(event.time)
            stage.duration = event.duration
            if event.stage == state.audit_stage and event.data is not None:
                state.audit = Verdict.model_validate(event.data)
        elif isinstance(event, StageFailed):
            stage.status = "failed"
            stage.finished = timestamp(event.time)
            stage.duration = event.duration
            stage.error = event.error
        elif isinstance(event, StageSkipped):
            stage.status = "skipped"
            stage.error = event.reason

    def _write_output(self, event: StageSucceeded) -> str:
        rel = f"stages/{event.stage}.md"
        text = event.output if event.output.endswith("\n") or not event.output else event.output + "\n"
        # Atomic now, durable with the next state flush (its fsync commits these too): one fsync
        # per stage would cost more than the scheduling of a short stage.
        self._write(self.folder / rel, text.encode("utf-8"), durable=False)
        if event.data is not None:
            data = json.dumps(event.data, indent=2, ensure_ascii=False) + "\n"
            self._write(self.folder / f"stages/{event.stage}.json", data.encode("utf-8"), durable=False)
        return rel

    def _write(self, path: Path, content: bytes, *, durable: bool = True) -> None:
        try:
            atomic_write(path, content, durable=durable)
        except OSError as exc:
            raise StateError(f"can't write {path}: {exc.strerror or exc}") from exc

    def flush(self) -> None:
        """Write ``state.json`` and ``workflow-state.md`` (each atomically)."""
        self._last_flush = time.monotonic()
        self._write(self.folder / "state.json", (self.state.model_dump_json(indent=2) + "\n").encode("utf-8"))
        self._write(self.folder / "workflow-state.md", self.render_markdown(self.state).encode("utf-8"))
