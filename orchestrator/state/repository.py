"""Where a task's run state lives: the ``StateRepository`` seam and ``FileRepository``, today's format.

    docs/ai/<task>/
      state.json          the source of truth (RunState, versioned)
      workflow-state.md   regenerated from it, for people and agents; never parsed back
      events.jsonl        append-only, one event per line
      stages/<id>.md      each finished stage's output (stages/<id>.json for structured ones)
      approvals/<id>.json people's decisions on gates
      workspace/          the workspace manifests fingerprints are taken against
      .lock               who runs the task now

Only this module knows that layout; everything else asks it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from ..errors import StateError
from ..events import (
    Event,
    StageExpanded,
    from_json,
)
from .lock import is_held
from .model import SCHEMA_VERSION, RunState
from .reducer import apply_event

__all__ = ["load_state", "observed_state", "read_events", "recover_state"]


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


def read_events(folder: Path, offset: int = 0, *, display: str | None = None) -> list[tuple[int, Event]]:
    """The events of ``events.jsonl`` from byte ``offset`` on, each with the offset just past it.

    A last line without its newline is still being written (or was torn by a crash, and is cut away when a
    run next opens the log): the list ends before it. A whole line that does not parse is damage, and an error
    naming its line, never skipped.
    """
    try:
        with open(folder / EVENTS_FILE, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return []
    out: list[tuple[int, Event]] = []
    position = offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            event = from_json(json.loads(line))
        except (ValueError, RecursionError, TypeError, KeyError, AttributeError) as exc:
            where = f"{display or folder}/{EVENTS_FILE}"
            at = f" line {_line_of(folder / EVENTS_FILE, position)}"
            raise StateError(
                f"{where}{at} is damaged: {str(exc) or type(exc).__name__}",
                hint="move the file aside, or start the task afresh with: orchestrate run <workflow> --task <task> "
                "--force",
            ) from None
        position += len(line)
        out.append((position, event))
    return out


def _line_of(path: Path, position: int) -> int:
    """The line number of the line that starts at byte ``position`` of ``path``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(position).count(b"\n") + 1
    except OSError:
        return 0


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


STATE_FILE = "state.json"
EVENTS_FILE = "events.jsonl"
REPORT_FILE = "workflow-state.md"
STAGES_DIR = "stages"
APPROVALS_DIR = "approvals"
WORKSPACE_DIR = "workspace"
TORN_SUFFIX = ".torn"


class StateRepository(Protocol):
    """Where one task's run state lives (``FileRepository``: a folder in the project)."""

    display: str  # how messages name it

    def exists(self) -> bool:
        """Whether a run of the task was ever recorded."""
        ...

    def recover(self) -> RunState:
        """The latest state: the snapshot plus the events logged after it."""
        ...

    def events(self, offset: int = 0) -> list[tuple[int, Event]]:
        """The logged events from ``offset`` on, each with the offset just past it."""
        ...

    def output(self, stage: str) -> str | None:
        """A finished stage's output, or None when there is none."""
        ...

    def data(self, stage: str) -> dict[str, Any] | None:
        """A finished stage's structured output, or None."""
        ...


class FileRepository:
    """A task's state as files in ``folder`` (the layout in the module docstring)."""

    def __init__(self, folder: Path, display: str | None = None) -> None:
        self.folder = folder
        self.display = display or str(folder)

    # -- where things are -----------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.folder / STATE_FILE

    @property
    def events_file(self) -> Path:
        return self.folder / EVENTS_FILE

    @property
    def report_file(self) -> Path:
        return self.folder / REPORT_FILE

    @property
    def temporal_note(self) -> Path:
        """Where a run on Temporal is (server, namespace, workflow id), while it lasts."""
        return self.folder / "temporal.json"

    @property
    def temporal_recorded(self) -> Path:
        """How many of a run on Temporal's events its home has written (a restarted home skips those)."""
        return self.folder / ".temporal-recorded"

    @property
    def stages(self) -> Path:
        """Outputs and transcripts of stages."""
        return self.folder / STAGES_DIR

    @property
    def approvals(self) -> Path:
        return self.folder / APPROVALS_DIR

    @property
    def workspace(self) -> Path:
        """Workspace manifests, for the fingerprints of stages that act."""
        return self.folder / WORKSPACE_DIR

    def output_file(self, stage: str) -> Path:
        return self.stages / f"{stage}.md"

    def data_file(self, stage: str) -> Path:
        return self.stages / f"{stage}.json"

    def approval_file(self, stage: str) -> Path:
        return self.approvals / f"{stage}.json"

    # -- reading --------------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.state_file.exists()

    def recover(self) -> RunState:
        return recover_state(self.folder, display=self.display)

    def observe(self) -> RunState:
        return observed_state(self.folder, display=self.display)

    def events(self, offset: int = 0) -> list[tuple[int, Event]]:
        return read_events(self.folder, offset, display=self.display)

    def output(self, stage: str) -> str | None:
        try:
            return self.output_file(stage).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def data(self, stage: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.data_file(stage).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    # -- writing (the caller holds the task's lock) ---------------------------------------------------

    def open_log(self) -> tuple[int, int]:
        """Open the event log to append to; returns the descriptor and its size.

        A last line without its newline is a write a crash cut short: it is moved to ``events.jsonl.torn``
        (kept for whoever wants to look) and cut from the log, so the next event starts a line of its own.
        """
        fd = os.open(self.events_file, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.lseek(fd, 0, os.SEEK_END)
        if size:
            tail_start = max(0, size - 65536)
            os.lseek(fd, tail_start, os.SEEK_SET)
            tail = os.read(fd, size - tail_start)
            if not tail.endswith(b"\n"):
                cut = tail_start + tail.rfind(b"\n") + 1 if b"\n" in tail else _last_newline(fd, tail_start)
                os.lseek(fd, cut, os.SEEK_SET)
                torn = os.read(fd, size - cut)
                with open(self.folder / (EVENTS_FILE + TORN_SUFFIX), "ab") as aside:
                    aside.write(torn + b"\n")
                os.ftruncate(fd, cut)
                size = cut
        return fd, size


def _last_newline(fd: int, before: int) -> int:
    """The offset just past the last newline before ``before`` (0 when there is none)."""
    position = before
    while position > 0:
        start = max(0, position - 65536)
        os.lseek(fd, start, os.SEEK_SET)
        chunk = os.read(fd, position - start)
        if b"\n" in chunk:
            return start + chunk.rfind(b"\n") + 1
        position = start
    return 0
