"""The ``orchestrate state`` commands: a run driven from outside, one step at a time.

Inside OpenCode or Claude Code the compiled coordinator delegates each stage to
its subagent and records progress with ``orchestrate state begin|next|start|
done|fail|note``. Each command takes the task's lock (waiting a little for
another command to finish), reads the state (``recover_state``), refuses what
the DAG forbids, records the step as the same events ``orchestrate run`` emits
and lets the ``Driver`` settle what follows, all written atomically to
``events.jsonl``, ``state.json`` and ``workflow-state.md``. So ``orchestrate
status``, ``explain``, ``approve`` and a later ``orchestrate run`` of the task
read a run driven by hand like any other. This module never runs a stage,
never prints, and never reads the environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..audit import VerdictError, parse_verdict
from ..contracts import parse_structured, validate_data
from ..errors import StateError, UsageError
from ..events import RunStarted, StageNoted
from ..params import check_stage, check_task
from ..project import Project
from ..state.lock import TaskLock
from ..state.model import StageState
from ..state.repository import FileRepository
from .driven import Driver, Step, busy, epoch
from .options import PreparedRun, RunRequest
from .outcomes import StageOutcome
from .prepare import prepare_run
from .session import initial_state, load_previous, start_session

__all__ = [
    "LOCK_WAIT",
    "Started",
    "Step",
    "begin_run",
    "fail_stage",
    "finish_stage",
    "next_step",
    "note_stage",
    "start_stage",
]

LOCK_WAIT = 30.0  # seconds a command waits for another one (or a headless run) to let go of the task


@dataclass(frozen=True)
class Started:
    step: Step
    stage: str
    subagent: str  # the generated config name to delegate to ("" for a command)
    prompt: str  # the message for the subagent: the same user message ``orchestrate run`` sends
    command: str | None  # a command stage's shell command, run from ``cwd``
    cwd: str
    output_file: str  # where the output goes, relative to the project root


# -- the commands ------------------------------------------------------------------------------------


def begin_run(
    workflow: Path,
    project: Project,
    request: RunRequest,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[Step, bool]:
    """Create the task's driven run (or go on with the one that stopped); returns the step and whether
    an earlier run was continued. ``request.force`` starts afresh."""
    prepared = prepare_run(workflow, project, replace(request, driven=True))
    with _locked(prepared):
        previous = load_previous(prepared)
        session = start_session(prepared, previous)
        state = initial_state(prepared, session.run_id, clock(), session)
        if not session.resume:  # a new run: every stage is to be done again (skip-unchanged is `orchestrate run`'s)
            for sid in list(state.stages):
                if sid not in prepared.compiled.plan.stages:
                    del state.stages[sid]
                    continue
                old = state.stages[sid]
                state.stages[sid] = StageState(
                    id=sid, agent=old.agent, model=old.model, needs=old.needs, gate=old.gate, unconfined=old.unconfined
                )
        state.driver = "state"
        state.command = f"orchestrate state next {prepared.task}"
        drive = Driver(prepared, state, clock, snapshot=True)
        try:
            if not session.resume:
                drive.emit(
                    RunStarted(
                        clock(), state.run_id, state.workflow, state.task, tuple(drive.plan.order), state.max_parallel
                    )
                )
            drive.settle()
            return drive.step(), session.resume
        finally:
            drive.store.close()


def next_step(project: Project, task: str, *, clock: Callable[[], float] = time.time) -> Step:
    """Settle the task and say what may start now."""
    with _driving(project, task, clock) as drive:
        return drive.step()


def start_stage(project: Project, task: str, stage: str, *, clock: Callable[[], float] = time.time) -> Started:
    """Mark ``stage`` running (refusing what the DAG forbids) and return the message for its subagent."""
    with _driving(project, task, clock) as drive:
        sid = _known(drive, stage)
        current = drive.state.stages[sid]
        spec = drive.spec(sid)
        what = f"can't start stage {sid!r}"
        if current.status == "running" and current.instances:
            raise UsageError(
                f"{what}: it runs once per item; start its instances instead",
                hint=", ".join(current.instances) or None,
            )
        if current.status == "running":
            raise UsageError(
                f"{what}: it is already running (since {current.started})",
                hint=f"finish it with: orchestrate state done {task} {sid} --output FILE (or state fail)",
            )
        if current.status == "succeeded":
            spec_id = current.instance_of or sid
            active = [o for o in drive.plan.order if o in drive.plan.descendants({spec_id}) and busy(drive, o)]
            if active:
                raise UsageError(
                    f"{what} again: {', '.join(active)} (after it) is running or waiting",
                    hint="redo it once they are done; what needs it then runs again too",
                )
        if current.status == "waiting_approval":
            raise UsageError(
                f"{what}: it waits for approval",
                hint=f"orchestrate approve {task} {sid}  (or: orchestrate reject {task} {sid} --note WHY)",
            )
        if current.status == "skipped" and current.conditional:
            raise UsageError(f"{what}: it was skipped ({current.error})")
        if spec.kind == "approval":
            raise UsageError(
                f"{what}: it is an approval gate; a person decides it",
                hint=f"orchestrate approve {task} {sid}  (or: orchestrate reject {task} {sid} --note WHY)",
            )
        waiting = [f"{need} ({drive.state.stages[need].status})" for need in current.needs if not drive.released(need)]
        if waiting:
            raise UsageError(
                f"{what}: its needs are not done: {', '.join(waiting)}",
                hint=f"see what may start with: orchestrate state next {task}",
            )
        if current.instance_of is None and spec.foreach is not None:
            raise UsageError(f"{what}: it runs once per item; its instances appear once its needs are done")
        if sid == drive.plan.audit_stage:
            open_ = [o for o in drive.plan.order if o != sid and not drive.released(o)]
            if open_:
                raise UsageError(f"{what}: the audit runs last, and {', '.join(open_)} is not done")
        reason = "started with orchestrate state start"
        if current.status in ("failed", "skipped", "interrupted", "succeeded"):
            reason = f"started again after it {'was ' if current.status != 'succeeded' else ''}{current.status}"
        stage_input = drive.stage_input(sid)
        request = stage_input.request
        assert request is not None  # a stage with an output has a request
        drive.start(sid, reason)
        drive.settle()
        shell = request.command
        return Started(
            step=drive.step(),
            stage=sid,
            subagent=drive.agents.get(spec.agent or "", ""),
            prompt=request.prompt,
            command=shell.command if shell is not None else None,
            cwd=shell.cwd if shell is not None else ".",
            output_file=f"{drive.prepared.display}/stages/{sid}.md",
        )


def finish_stage(
    project: Project, task: str, stage: str, output: str | None, *, clock: Callable[[], float] = time.time
) -> Step:
    """Record ``stage`` as done with ``output`` (None: the file the stage wrote in its state folder)."""
    with _driving(project, task, clock) as drive:
        sid = _running(drive, stage, "finish")
        current = drive.state.stages[sid]
        if output is None:
            output = _written_output(drive, sid)
        if output and not output.endswith("\n"):
            output += "\n"  # as the state folder stores it, so its digest matches the file's
        data: dict[str, Any] | None = None
        schema = drive.prepared.compiled.schemas.get(current.instance_of or sid)
        if schema is not None:
            data = _structured(sid, output, schema)
        if sid == drive.plan.audit_stage:
            try:
                verdict = parse_verdict(None, output)
            except VerdictError as exc:
                raise UsageError(
                    f"can't finish stage {sid!r}: {exc}",
                    hint='the audit output must end with a ```json block: {"verdict": "pass" or "fail", '
                    '"summary": ..., "findings": [...], "checklist": [...]}',
                ) from None
            data = verdict.model_dump()
        stage_input = drive.stage_input(sid)
        outcome = StageOutcome("succeeded", output, data, fingerprint=stage_input.fingerprint)
        drive.finish(sid, outcome, stage_input)
        drive.settle()
        return drive.step()


def fail_stage(project: Project, task: str, stage: str, reason: str, *, clock: Callable[[], float] = time.time) -> Step:
    """Record ``stage`` as failed because of ``reason``; what needs it is skipped."""
    if not reason.strip():
        raise UsageError("say why the stage failed", hint="--reason TEXT")
    with _driving(project, task, clock) as drive:
        sid = _running(drive, stage, "fail")
        error = " ".join(reason.split())
        drive.finish(sid, StageOutcome("failed", error=error))
        drive.settle()
        return drive.step()


def note_stage(
    project: Project, task: str, stage: str, text: str, *, by: str = "", clock: Callable[[], float] = time.time
) -> Step:
    """Leave a note on ``stage`` (any status), shown in ``workflow-state.md``."""
    if not text.strip():
        raise UsageError("the note is empty")
    with _driving(project, task, clock) as drive:
        sid = _known(drive, stage)
        drive.emit(StageNoted(drive.clock(), sid, text.strip(), by))
        return drive.step()


# -- helpers ------------------------------------------------------------------------------------------


@contextmanager
def _locked(prepared: PreparedRun) -> Iterator[None]:
    with TaskLock(prepared.folder, f"orchestrate state ({prepared.task})", display=prepared.display, wait=LOCK_WAIT):
        yield


@contextmanager
def _driving(project: Project, task: str, clock: Callable[[], float]) -> Iterator[Driver]:
    """The task's driven run, locked, settled, and written out when the command is done."""
    folder = project.state_root / check_task(task)
    display = project.display(folder)
    if not FileRepository(folder, display).exists():
        raise StateError(
            f"no run state in {display}/",
            hint=f"begin one with: orchestrate state begin <workflow> --task {task} --param NAME=VALUE",
        )
    with TaskLock(folder, f"orchestrate state ({task})", display=display, wait=LOCK_WAIT):
        state = FileRepository(folder, display).recover()
        workflow = project.root / state.workflow_file
        prepared = prepare_run(
            workflow, project, RunRequest(task=task, params=state.params, offline=state.offline, driven=True)
        )
        if state.workflow != prepared.compiled.plan.workflow.name:
            raise StateError(
                f"{display}/state.json belongs to workflow {state.workflow!r}, but {state.workflow_file} is "
                f"{prepared.compiled.plan.workflow.name!r}",
                hint=f"begin the task afresh: orchestrate state begin {state.workflow_file} --task {task} --force",
            )
        drive = Driver(prepared, state, clock)
        try:
            drive.settle()
            yield drive
        finally:
            drive.store.close()


def _known(drive: Driver, stage: str) -> str:
    return check_stage(stage, drive.state.stages, f"task {drive.state.task!r} has no stage {stage!r}")


def _running(drive: Driver, stage: str, verb: str) -> str:
    sid = _known(drive, stage)
    current = drive.state.stages[sid]
    if current.status != "running" or current.instances:
        task = drive.state.task
        hint = f"start it first: orchestrate state start {task} {sid}" if current.status == "pending" else None
        if current.instances:
            hint = "its instances are recorded one by one: " + ", ".join(current.instances)
        raise UsageError(
            f"can't {verb} stage {sid!r}: it is {current.status.replace('_', ' ')}, not running", hint=hint
        )
    return sid


def _written_output(drive: Driver, sid: str) -> str:
    """The output a stage wrote straight into its state folder since it started."""
    path = drive.prepared.repository.output_file(sid)
    started = drive.state.stages[sid].started
    try:
        fresh = started is not None and path.stat().st_mtime >= epoch(started) - 1
        text = path.read_text(encoding="utf-8") if fresh else None
    except (OSError, UnicodeDecodeError):
        text = None
    if not text or not text.strip():
        task = drive.state.task
        raise UsageError(
            f"can't finish stage {sid!r}: no output given",
            hint=f"pass it: orchestrate state done {task} {sid} --output FILE (or --output - to read stdin), "
            f"or write {drive.prepared.display}/stages/{sid}.md first",
        )
    return text


def _structured(sid: str, output: str, schema: dict[str, Any]) -> dict[str, Any]:
    try:
        data = parse_structured(output)
    except ValueError as exc:
        raise UsageError(f"can't finish stage {sid!r}: its output_schema needs JSON, and {exc}") from None
    problems = validate_data(data, schema)
    if problems:
        raise UsageError(
            f"can't finish stage {sid!r}: its output does not match its output_schema: " + "; ".join(problems),
            hint="fix the output (the stage stays running) and run state done again",
        )
    return data if isinstance(data, dict) else {"value": data}
