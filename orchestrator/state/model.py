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

from ..audit import Finding, Verdict
from ..errors import StateError
from ..events import (
    ApprovalDecided,
    ApprovalRequested,
    AttemptFinished,
    AuditRound,
    BatchSubmitted,
    Event,
    RunFinished,
    RunStarted,
    StageExpanded,
    StageFailed,
    StageNoted,
    StageReopened,
    StageRetrying,
    StageReused,
    StageSkipped,
    StageStarted,
    StageSucceeded,
    from_json,
    to_json,
)
from ..fileio import atomic_write
from ..run.outcomes import RunStatus as Ended
from ..run.outcomes import StageStatus
from ..runners import Usage
from .lock import is_held

__all__ = [
    "SCHEMA_VERSION",
    "ApprovalState",
    "NoteState",
    "RoundState",
    "RunState",
    "StageState",
    "StateStore",
    "Tokens",
    "apply_event",
    "load_state",
    "observed_state",
    "read_events",
    "recover_state",
    "timestamp",
]

SCHEMA_VERSION = 2
BATCH_DELAY = 0.005  # seconds the writer lets events gather before writing them
RunStatus = Literal["running", Ended]  # the statuses a run can end with, or still running


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
    batch: bool = False  # sent through the Message Batches API


class BatchState(BaseModel):
    """A ``batch: true`` stage's submitted batch: a resumed run collects it rather than sending the request again."""

    id: str
    custom_id: str
    fingerprint: str  # the request in it


class ApprovalState(BaseModel):
    """A gate's decision, bound to the exact output (fingerprint and digest) a person saw."""

    status: Literal["waiting", "approved", "rejected"]
    message: str = ""
    note: str = ""
    by: str | None = None
    decided: str | None = None
    fingerprint: str = ""
    output_sha256: str = ""


class RoundState(BaseModel):
    """One audit round: its verdict and the stages it sent back."""

    round: int
    verdict: str
    summary: str = ""
    findings: int = 0
    rework: list[str] = Field(default_factory=list)
    finished: str


class NoteState(BaseModel):
    """A note left on a stage with ``orchestrate state note``."""

    time: str
    text: str
    by: str = ""


class StageState(BaseModel):
    id: str
    agent: str
    model: str
    needs: list[str] = Field(default_factory=list)
    gate: bool = False  # a pure approval stage: no agent runs it
    status: StageStatus = "pending"
    reason: str | None = None  # why it ran, or why its earlier output was kept
    reused: bool = False
    from_run: str | None = None  # the run that produced a kept output
    round: int = 1
    tries: int = 0
    attempts: list[AttemptState] = Field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    duration: float | None = None
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    output: str | None = None
    fingerprint: str | None = None  # of the request that produced ``output``
    inputs: dict[str, str] = Field(default_factory=dict)  # what went into it, to say what changed
    output_sha256: str | None = None
    error: str | None = None
    approval: ApprovalState | None = None
    feedback: list[Finding] = Field(default_factory=list)  # audit findings it was sent back with
    instances: list[str] = Field(default_factory=list)  # a foreach stage's instances, in order
    instance_of: str | None = None  # an instance's foreach stage
    item: Any = None  # an instance's item
    conditional: bool = False  # skipped because its ``if`` was false
    notes: list[NoteState] = Field(default_factory=list)
    batch: BatchState | None = None  # the Message Batch holding its request: a rerun collects it if it has no output


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
    driver: Literal["run", "state"] = "run"  # "state": driven stage by stage with ``orchestrate state``
    offline: bool = False
    max_parallel: int = 1
    status: RunStatus = "running"
    note: str = ""  # why the run stopped early, in words
    started: str
    finished: str | None = None
    duration: float | None = None  # seconds the run has run, every invocation of it counted
    resumed: int = 0  # times this run was continued after stopping
    earlier: float = 0.0  # seconds its earlier invocations ran (a continued run's duration adds this one's)
    tokens: Tokens = Field(default_factory=Tokens)
    cost_usd: float | None = 0.0
    budget_usd: float | None = None
    audit_stage: str
    audit: Verdict | None = None
    round: int = 1
    max_rounds: int = 1
    rounds: list[RoundState] = Field(default_factory=list)
    sources: dict[str, str] = Field(default_factory=dict)  # sha256 of each workflow, template and context file
    log_offset: int = 0  # bytes of events.jsonl this snapshot includes
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
    afresh = "move it aside, or start the task afresh with: orchestrate run <workflow> --task <task> --force"
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StateError(
            f"no run state in {shown}/", hint="start one with: orchestrate run <workflow> --task <task>"
        ) from None
    except OSError as exc:
        raise StateError(f"can't read {named}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise StateError(f"{named} is not UTF-8 text (byte {exc.start}): it is damaged", hint=afresh) from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StateError(f"{named} is not valid JSON: {exc}", hint=afresh) from None
    except RecursionError:
        raise StateError(f"{named} is not a run state: it nests too deeply to read", hint=afresh) from None
    if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
        raise StateError(
            f"{named} has schema version {data.get('schema_version')!r}; this orchestrate reads {SCHEMA_VERSION}",
            hint="upgrade orchestrate, or start the task afresh with: orchestrate run <workflow> --task <task> --force",
        )
    try:
        return RunState.model_validate(data)
    except ValidationError as exc:
        where = ".".join(str(part) for part in exc.errors()[0]["loc"])
        raise StateError(
            f"{named} does not hold a valid run state: {where}: {exc.errors()[0]['msg']}", hint=afresh
        ) from None


def read_events(folder: Path, offset: int = 0) -> list[tuple[int, Event]]:
    """The events of ``events.jsonl`` from byte ``offset`` on, each with the offset just past it.

    A line that does not parse (a torn last line after a power cut) ends the list.
    """
    try:
        with open(folder / "events.jsonl", "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return []
    out: list[tuple[int, Event]] = []
    position = offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        position += len(line)
        try:
            out.append((position, from_json(json.loads(line))))
        except (ValueError, RecursionError):
            break
    return out


def recover_state(folder: Path, *, display: str | None = None) -> RunState:
    """The latest state of a task: ``state.json`` plus the events logged after it was written.

    ``state.json`` is rewritten a few times a second; events are logged as they
    happen. After a crash, the log's tail tells what the snapshot missed (a stage
    that finished just before the kill), so nothing finished is done twice.
    """
    state = load_state(folder, display=display)
    # Every run writes its first snapshot before it logs anything, so the tail belongs to the
    # snapshot's run.
    for position, event in read_events(folder, state.log_offset):
        stage = getattr(event, "stage", None)
        if stage is not None and stage not in state.stages and not isinstance(event, StageExpanded):
            raise StateError(
                f"{display or folder}/events.jsonl records stage {stage!r}, which its state.json does not have: "
                "the two don't belong together",
                hint="move them aside, or start the task afresh with: orchestrate run <workflow> --task <task> --force",
            )
        apply_event(state, event)
        state.log_offset = position
    return state


def observed_state(folder: Path, *, display: str | None = None) -> RunState:
    """The task's state as a reader should see it now (``status``, ``explain``): ``recover_state``, except that
    an ``orchestrate run`` whose process is gone (killed: it holds no lock) is interrupted, not running."""
    state = recover_state(folder, display=display)
    if state.driver == "run" and state.status == "running" and not is_held(folder):
        state.status = "interrupted"
        state.note = state.note or "its process is gone (it was killed, or its machine stopped)"
        for stage in state.stages.values():
            if stage.status == "running":
                stage.status = "interrupted"
                stage.error = stage.error or "its run's process is gone"
    return state


def _added(tokens: Tokens, cost: float | None, usage: Usage, more: float | None) -> tuple[Tokens, float | None]:
    total = Tokens.model_construct(
        input=tokens.input + usage.input_tokens,
        output=tokens.output + usage.output_tokens,
        cache_read=tokens.cache_read + usage.cache_read_tokens,
        cache_write=tokens.cache_write + usage.cache_write_tokens,
    )
    return total, (None if cost is None or more is None else round(cost + more, 6))


def apply_event(state: RunState, event: Event) -> None:
    """Bring ``state`` up to date with one event (the store's and recovery's one way to do it)."""
    if isinstance(event, RunStarted):
        state.status = "running"
        state.round = event.round
        return
    if isinstance(event, RunFinished):
        state.status = event.status  # type: ignore[assignment]
        state.note = event.note
        state.finished = timestamp(event.time)
        state.duration = round(state.earlier + event.duration, 3)
        return
    if isinstance(event, AuditRound):
        state.rounds.append(
            RoundState(
                round=event.round,
                verdict=event.verdict,
                summary=event.summary,
                findings=event.findings,
                rework=list(event.rework),
                finished=timestamp(event.time),
            )
        )
        if event.rework:
            state.round = event.round + 1
        return
    if isinstance(event, StageExpanded):
        _expand(state, event)
        return
    stage = state.stages[event.stage]
    if isinstance(event, StageStarted):
        stage.status = "running"
        stage.reason = event.reason
        stage.reused, stage.from_run = False, None
        stage.started = timestamp(event.time)
        stage.finished = stage.duration = stage.error = None
        stage.model = event.model
        stage.round = event.round
        stage.tries = 1
        # The earlier output no longer belongs to this stage's inputs.
        stage.output = stage.fingerprint = stage.output_sha256 = None
        stage.inputs = {}
        if stage.approval is not None and stage.approval.status != "rejected":
            stage.approval = None
    elif isinstance(event, StageReused):
        stage.status = "succeeded"
        stage.reason = event.reason
        stage.reused, stage.from_run = True, event.from_run
        stage.fingerprint, stage.inputs = event.fingerprint, event.inputs
        stage.output_sha256 = event.output_sha256
        stage.output = None if stage.gate else f"stages/{event.stage}.md"
        stage.error = None
        if event.stage == state.audit_stage and event.data is not None:
            state.audit = Verdict.model_validate(event.data)
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
                batch=record.batch,
            )
        )
        # Stage and run totals follow every attempt, so an interrupted run still shows what it spent.
        stage.tokens, stage.cost_usd = _added(stage.tokens, stage.cost_usd, record.usage, event.cost_usd)
        state.tokens, state.cost_usd = _added(state.tokens, state.cost_usd, record.usage, event.cost_usd)
    elif isinstance(event, BatchSubmitted):
        stage.batch = BatchState(id=event.batch_id, custom_id=event.custom_id, fingerprint=event.fingerprint)
    elif isinstance(event, StageRetrying):
        stage.tries = event.attempt + 1
        stage.error = f"try {event.attempt} failed: {event.error}"
    elif isinstance(event, StageSucceeded):
        stage.status = "succeeded"
        stage.finished = timestamp(event.time)
        stage.duration = event.duration
        stage.error = None
        stage.fingerprint, stage.inputs, stage.output_sha256 = event.fingerprint, event.inputs, event.output_sha256
        if not stage.gate:
            stage.output = f"stages/{event.stage}.md"
        if event.stage == state.audit_stage and event.data is not None:
            state.audit = Verdict.model_validate(event.data)
    elif isinstance(event, StageFailed):
        stage.status = "interrupted" if event.interrupted else "failed"
        stage.finished = timestamp(event.time)
        stage.duration = event.duration
        stage.error = event.error
    elif isinstance(event, StageReopened):
        stage.status = "pending"
        stage.reason = event.reason
        stage.error = None
        stage.conditional = False
        stage.finished = stage.duration = None
    elif isinstance(event, StageNoted):
        stage.notes.append(NoteState(time=timestamp(event.time), text=event.text, by=event.by))
    elif isinstance(event, StageSkipped):
        stage.status = "skipped"
        stage.error = event.reason
        stage.conditional = event.conditional
    elif isinstance(event, ApprovalRequested):
        stage.status = "waiting_approval"
        stage.fingerprint, stage.output_sha256 = event.fingerprint, event.output_sha256
        stage.approval = ApprovalState(
            status="waiting",
            message=event.message,
            fingerprint=event.fingerprint,
            output_sha256=event.output_sha256,
        )
    elif isinstance(event, ApprovalDecided):
        stage.fingerprint = event.fingerprint
        stage.approval = ApprovalState(
            status="approved" if event.approved else "rejected",
            message=stage.approval.message if stage.approval else "",
            note=event.note,
            by=event.by,
            decided=timestamp(event.time),
            fingerprint=event.fingerprint,
            output_sha256=stage.output_sha256 or "",
        )
        if event.approved:
            stage.status = "succeeded"
        else:
            stage.status = "failed"
            stage.error = "rejected" + (f": {event.note}" if event.note else "")


def _expand(state: RunState, event: StageExpanded) -> None:
    """A foreach stage's instances join the stages, right after it; instances of an earlier expansion that
    are not in this one leave (what an earlier run recorded of the others is kept, for skip-unchanged)."""
    parent = state.stages[event.stage]
    parent.status = "running"
    parent.instances = list(event.instances)
    stages: dict[str, StageState] = {}
    for sid, stage in state.stages.items():
        if stage.instance_of == event.stage:
            continue
        stages[sid] = stage
        if sid == event.stage:
            for iid, item in zip(event.instances, event.items or [None] * len(event.instances), strict=False):
                old = state.stages.get(iid)
                if old is not None and old.instance_of == event.stage:
                    old.item = item
                    stages[iid] = old
                else:
                    stages[iid] = StageState(
                        id=iid,
                        agent=parent.agent,
                        model=parent.model,
                        needs=list(parent.needs),
                        instance_of=event.stage,
                        item=item,
                    )
    state.stages = stages


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
        self.state = state
        # Told of a failed write at once (from the writer thread): the run must stop paying for work it can't keep.
        self.on_error = on_error
        self.render_markdown = render_markdown
        self.flush_interval = flush_interval
        self._events_fd: int | None = None
        self._error: BaseException | None = None
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        try:
            (folder / "stages").mkdir(parents=True, exist_ok=True)
            # Temp files of atomic writes a killed run never renamed; the caller holds the task's lock.
            for leftover in [*folder.glob(".*.tmp"), *(folder / "stages").glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
            self._events_fd = os.open(folder / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._offset = os.lseek(self._events_fd, 0, os.SEEK_END)
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
            for suffix in (".md", ".json"):
                (self.folder / "stages" / f"{event.stage}{suffix}").unlink(missing_ok=True)
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
        self.state.log_offset = self._offset
        self._write(self.folder / "state.json", (self.state.model_dump_json(indent=2) + "\n").encode("utf-8"))
        self._write(self.folder / "workflow-state.md", self.render_markdown(self.state).encode("utf-8"))
